"""MkDocs hooks (mkdocs.yml ``hooks:``) for the docs site.

* The generated reference pages must be current: the build fails, naming them, when
  ``scripts/docs_pages.py`` would change them (so ``mkdocs build --strict`` in CI catches a stale page).
* ``BENCHMARKS.md`` at the repository root is the site's ``benchmarks.md`` (one source, not a copy),
  with the pictures it links from ``benchmarks/``.
* The docstrings' Sphinx roles (``:func:`x```), which mkdocstrings leaves as text, show as plain code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
#: a Sphinx role before the code it names, as rendered: ":meth:<code>serve</code>", ":func:<code>~.x.y</code>"
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):<code>~?\.?")


def on_pre_build(config) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    from docs_pages import stale_pages

    stale = stale_pages()
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        raise PluginError(f"generated docs pages are stale: {names}; run scripts/docs_pages.py")


def on_page_content(html: str, page, config, files) -> str:
    return SPHINX_ROLE.sub("<code>", html)


def on_files(files, config):
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "benchmarks.md", content=text))
    for link in sorted(set(re.findall(r"\]\((benchmarks/[^)\s]+\.png)\)", text))):
        files.append(File.generated(config, link, abs_src_path=str(ROOT / link)))
    return files
