"""The docs: generated reference pages match the parsers and the schema, the README stays short and
its links resolve, and the README's picture matches the shipped models. Fast: nothing is rendered."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from asyncvid.cli.main import build_parser, main
from asyncvid.cli.reference import WIDTH, commands
from asyncvid.render.schema_reference import default_of, type_of

ROOT = Path(__file__).resolve().parents[2]
CLI_PAGE = ROOT / "docs/reference/cli.md"
JOB_PAGE = ROOT / "docs/reference/job-file.md"


def _docs_pages():
    spec = importlib.util.spec_from_file_location("docs_pages", ROOT / "scripts/docs_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current():
    stale = _docs_pages().stale_pages()
    assert stale == [], "stale generated docs pages: run scripts/docs_pages.py"


def test_a_changed_or_missing_page_is_reported_stale(tmp_path):
    pages = _docs_pages()
    (tmp_path / "docs/reference").mkdir(parents=True)
    for path, text in pages.generated_pages(tmp_path).items():
        path.write_text(text, encoding="utf-8")
    assert pages.stale_pages(tmp_path) == []
    cli = tmp_path / "docs/reference/cli.md"
    cli.write_text(cli.read_text(encoding="utf-8").replace("--devices N", "--devices D", 1), encoding="utf-8")
    (tmp_path / "docs/reference/job-file.md").unlink()
    assert sorted(p.name for p in pages.stale_pages(tmp_path)) == ["cli.md", "job-file.md"]


def test_cli_page_holds_exactly_what_every_help_prints(capsys, monkeypatch):
    """Every command and subcommand of the real parser, its `--help` as a terminal prints it."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    page = CLI_PAGE.read_text(encoding="utf-8")
    words = [w for w, _, _ in commands(build_parser())]
    assert {("render",), ("schema",), ("bench",), ("plan",), ("eval",), ("slurm", "submit")} <= set(words)
    assert len(re.findall(r"^## `asyncvid.*`$", page, re.M)) == len(words)
    for command in words:
        assert main(list(command) + ["--help"]) == 0
        printed = capsys.readouterr().out.rstrip()
        title = " ".join(("asyncvid",) + command)
        assert f"```text\n$ {title} --help\n{printed}\n```" in page, title


def test_job_file_page_has_a_row_per_schema_field_as_asyncvid_schema_prints_it(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    item = schema["properties"]["jobs"]["items"]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*\|$", JOB_PAGE.read_text(encoding="utf-8"), re.M)}
    for name, prop in item["properties"].items():
        description = prop["description"].replace("<", "&lt;").replace(">", "&gt;")
        assert rows.get(name) == (f"| `{name}` | {type_of(prop)} | {default_of(name, prop, item['required'])} "
                                  f"| {' '.join(description.split())} |"), name
    assert set(rows) >= set(item["properties"]) | set(schema["properties"])


def test_every_job_field_is_described_with_its_kind_default(capsys):
    assert main(["schema"]) == 0
    props = json.loads(capsys.readouterr().out)["properties"]["jobs"]["items"]["properties"]
    assert [name for name, prop in props.items() if not prop.get("description")] == []
    assert props["guidance"]["description"].endswith("(default 7.5)")
    assert props["strength"]["description"].endswith("(default 0.8)")
    assert type_of(props["format"]) == '`"mp4"` \\| `"webm"` \\| `"gif"` \\| `"av1"` \\| `"png"`'
    assert type_of(props["strength"]) == "number > 0, <= 1"


def _slugs(markdown: str) -> set[str]:
    """Heading anchors as GitHub and MkDocs make them (outside code blocks)."""
    slugs, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text)))
    return slugs


def _links(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m)]


def test_readme_is_short_and_its_links_and_anchors_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    links = _links(readme)
    assert "docs/troubleshooting.md" in links and "docs/images/readme-strip.png" in links
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), link
        if anchor:
            assert anchor in _slugs(target.read_text(encoding="utf-8")), link


def test_readme_keeps_the_two_commands_that_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert "scripts/setup.sh && .venv/bin/asyncvid render examples/quickstart.yaml" in readme
    assert "scripts/setup.sh && .venv/bin/python -m pytest -q" in readme
    assert "scripts/setup.sh && .venv/bin/python -m pytest -q" in ci
    assert "mkdocs build --strict" in ci


def test_readme_figure_is_small_and_shows_the_shipped_models_as_they_are():
    from asyncvid.catalog.builtin import PACKAGED
    from asyncvid.catalog.folders import model_fingerprint

    png = ROOT / "docs/images/readme-strip.png"
    assert png.stat().st_size < 300_000
    numbers = json.loads(png.with_suffix(".json").read_text(encoding="utf-8"))
    shown = {m["model"]: m for m in numbers["models"]}
    assert set(shown) == set(PACKAGED)
    for name, entry in shown.items():
        assert entry["fingerprint"] == model_fingerprint(name), \
            f"{name} changed since the README figure: run scripts/make_readme_figure.py"
        assert [c["config"] for c in entry["configs"]] == ["sequential", "async N=2 S=1", "async N=2 S=2"]


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_s_navigation_names_existing_pages_and_reserves_troubleshooting():
    import yaml

    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    assert {"index.md", "quickstart.md", "troubleshooting.md", "reference/api.md", "reference/cli.md",
            "reference/job-file.md", "benchmarks.md", "architecture.md"} <= set(nav)
    # benchmarks.md is BENCHMARKS.md at the root, added by scripts/docs_hooks.py
    assert [p for p in nav if not (ROOT / "docs" / p).is_file()] == ["benchmarks.md"]
    assert (ROOT / "BENCHMARKS.md").is_file()
