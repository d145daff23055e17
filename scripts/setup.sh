#!/usr/bin/env bash
# Create .venv (if missing) and install asyncvid with pinned CPU dependencies. Idempotent and quick
# when already done. torch==2.13.0 is pinned in the same pip call as diffusers so that pip takes the
# CPU wheel, never a multi-GB CUDA build. On a GPU machine, install your own torch first and then
# `pip install -e .` (the package only asks for torch>=2.4). requirements/docs.txt: the docs site's tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.asyncvid-setup
want=$(cat requirements/cpu.txt requirements/docs.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # docs.txt: the docs site's tools (CI builds the site), in the same call so that pip resolves them with the pins
  .venv/bin/pip install -q --disable-pip-version-check -r requirements/cpu.txt -r requirements/docs.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, diffusers, av, asyncvid, mkdocs, material, mkdocstrings_handlers.python"
  echo "$want" > "$stamp"
fi
