"""asyncvid: AsyncDiff asynchronous stage-parallel denoising for video diffusion UNets."""

from .errors import AsyncVidError


def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncvid")
    except PackageNotFoundError:  # a source tree on sys.path without `pip install`
        return "0+unknown"


__version__ = _version()


def parallelize(pipe, **options):
    """See :func:`asyncvid.pipelines.parallel.parallelize`."""
    from .pipelines.parallel import parallelize as _parallelize

    return _parallelize(pipe, **options)


def launch_local(fn, nprocs, *args, **kwargs):
    """See :func:`asyncvid.launch.launch_local`."""
    from .launch import launch_local as _launch_local

    return _launch_local(fn, nprocs, *args, **kwargs)


__all__ = ["AsyncVidError", "parallelize", "launch_local", "__version__"]
