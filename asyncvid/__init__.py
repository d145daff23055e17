"""asyncvid: AsyncDiff asynchronous stage-parallel denoising for video diffusion UNets."""

from .errors import AsyncVidError

__version__ = "0.1.0"


def parallelize(pipe, **options):
    """See :func:`asyncvid.pipelines.parallel.parallelize`."""
    from .pipelines.parallel import parallelize as _parallelize

    return _parallelize(pipe, **options)


def launch_local(fn, nprocs, *args, **kwargs):
    """See :func:`asyncvid.launch.launch_local`."""
    from .launch import launch_local as _launch_local

    return _launch_local(fn, nprocs, *args, **kwargs)


__all__ = ["AsyncVidError", "parallelize", "launch_local", "__version__"]
