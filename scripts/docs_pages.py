"""Write the generated pages of the docs site, or check that they are current.

    .venv/bin/python scripts/docs_pages.py           # rewrite docs/reference/cli.md and job-file.md
    .venv/bin/python scripts/docs_pages.py --check   # exit 1 naming each stale page (CI's docs build does this too)

The CLI page comes from the argument parsers (:mod:`asyncvid.cli.reference`), the job-file page from
the job file's JSON Schema (:mod:`asyncvid.render.schema_reference`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generated_pages(root: Path = ROOT) -> dict[Path, str]:
    """docs page path (under ``root``) -> the text it must have."""
    from asyncvid.cli.reference import cli_page
    from asyncvid.render.schema_reference import job_file_page

    return {root / "docs/reference/cli.md": cli_page(), root / "docs/reference/job-file.md": job_file_page()}


def stale_pages(root: Path = ROOT) -> list[Path]:
    """The generated pages under ``root`` that are missing or differ from what they must be."""
    return [path for path, text in generated_pages(root).items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run scripts/docs_pages.py)", file=sys.stderr)
        return 1 if stale else 0
    from asyncvid.utils import atomic_write

    for path, text in generated_pages().items():
        atomic_write(path, text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
