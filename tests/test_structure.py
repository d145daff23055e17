"""The package's shape: the engine knows no framework or model family, imports form no cycle,
modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asyncvid"
FAMILY_WORDS = re.compile(r"\b(diffusers|animatediff|motion\w*|spatiotemporal\w*|svd|wan\w*|unetmotionmodel)\b", re.I)
#: files allowed over ~300 lines, with the reason
LONG_FILES: dict[str, str] = {
    "engine/runtime.py": "one protocol's two ends (driver, workers) with the watchdog's arming points beside each wait",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """asyncvid modules imported anywhere in the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_engine_and_distributed_know_no_framework_or_model_family():
    offenders = []
    for folder in ("engine", "distributed"):
        for path in (PACKAGE / folder).glob("*.py"):
            text = path.read_text()
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    if any(n.split(".")[0] == "diffusers" or ".models" in n for n in names):
                        offenders.append(f"{path.name}: imports {names}")
            for i, line in enumerate(text.splitlines(), 1):
                if FAMILY_WORDS.search(line):
                    offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == []


def test_import_graph_has_no_cycles():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of design
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_no_module_over_300_lines_without_a_reason():
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in long.items() if n > 300 and name not in LONG_FILES}
    assert over == {}
