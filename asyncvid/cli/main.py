"""The ``asyncvid`` command line: the top-level parser, SIGTERM as an interrupt, and dispatch.

Each subcommand module (``render``, ``bench`` with ``plan``, ``evaluate``, ``slurm``) provides
``add_<name>_parser(subparsers)`` that registers its parser with ``func=<handler(args) -> int>``.
Problems the user can fix are :class:`AsyncVidError` and are printed as one
``asyncvid: error: ...`` line with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import AsyncVidError


class DefaultsHelp(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS, "")
                or not action.option_strings or isinstance(default, (list, tuple))):
            return text
        return f"{text} (default: {default})" if text else f"default: {default}"


def _with_defaults_help(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = DefaultsHelp
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of subparsers
        if action.help is None and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"  # argparse prints nothing for an option without help
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                _with_defaults_help(sub)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="asyncvid", description="AsyncDiff stage-parallel video diffusion.")
    parser.add_argument("--version", action="version", version=f"asyncvid {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="warnings and results only (render: no progress bars or per-job lines)")
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="more detail, and the libraries' own warnings; other ranks speak too")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .bench import add_bench_parser
    from .evaluate import add_eval_parser
    from .render import add_render_parser
    from .slurm import add_slurm_parser

    add_render_parser(subparsers)
    add_bench_parser(subparsers)
    add_eval_parser(subparsers)
    add_slurm_parser(subparsers)
    _with_defaults_help(parser)
    return parser


def _terminated(signum, frame):
    """SIGTERM (scancel, a job's time limit, kill) unwinds like Ctrl-C, so partial outputs are removed."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    import signal

    # before any diffusers/transformers import: no download unless the user's own setting allows it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, _terminated)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    from .. import logs

    logs.configure(args.verbosity)
    if args.verbosity < 0 and hasattr(args, "quiet"):
        args.quiet = True  # `asyncvid -q render ...` is `render --quiet`
    try:
        return args.func(args)
    except AsyncVidError as exc:
        for problem in getattr(exc, "problems", None) or [str(exc)]:  # a job file's problems: one line each
            print(f"asyncvid: error: {' '.join(problem.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from ..distributed.env import dead_peers

        dead = dead_peers()  # a launcher such as torchrun stops the group when one of its ranks dies
        why = f" after {', '.join(dead)} on this host died or was killed" if dead else ""
        print(f"asyncvid: interrupted{why}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
