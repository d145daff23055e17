"""The CLI reference page (markdown) from the argument parsers themselves, so it cannot drift from them.

Every command and subcommand gets a heading, its one-line summary and the exact text that
``asyncvid ... --help`` prints at :data:`WIDTH` columns. ``scripts/docs_pages.py`` writes it to
``docs/reference/cli.md``; ``tests/docs/test_docs_pages.py`` fails when that file is stale.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator

#: terminal width the help is formatted for (argparse reads ``COLUMNS``); 80 fits the site's code blocks
WIDTH = 80

INTRO = """\
# Command line reference

Generated from the argument parsers by `scripts/docs_pages.py`: each block below is exactly what
`asyncvid ... --help` prints in a terminal {width} columns wide. Every command takes `-q` (warnings and
results only) or `-v` (more, and the libraries' own warnings) before its name.
"""


@contextlib.contextmanager
def help_width(columns: int = WIDTH) -> Iterator[None]:
    """Format help for a terminal ``columns`` wide, whatever the real terminal is."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (),
             summary: str = "") -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """(command words, one-line summary, parser) of ``parser`` and every subcommand below it, in order."""
    yield words, summary, parser
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            summaries = {a.dest: a.help or "" for a in action._choices_actions}  # noqa: SLF001
            for name, sub in action.choices.items():
                yield from commands(sub, words + (name,), summaries.get(name, ""))


def help_text(parser: argparse.ArgumentParser) -> str:
    with help_width():
        return parser.format_help()


def cli_page(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page, for ``parser`` (default: ``asyncvid``'s own)."""
    if parser is None:
        from .main import build_parser

        parser = build_parser()
    parts = [INTRO.format(width=WIDTH)]
    for words, summary, sub in commands(parser):
        title = " ".join(("asyncvid",) + words)
        parts.append(f"## `{title}`\n")
        if words and summary:
            parts.append(" ".join(summary.split()) + "\n")
        parts.append(f"```text\n$ {title} --help\n{help_text(sub).rstrip()}\n```\n")
    return "\n".join(parts)
