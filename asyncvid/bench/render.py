"""``asyncvid bench --render FILE --devices D``: a job file rendered on one device and on D, timed.

Each run is the real command (``asyncvid render FILE --devices N --profile``) in a fresh process
writing into its own temporary folder, so loading, replicas starting, decoding and encoding all
count. A CPU "device" is one thread (``OMP_NUM_THREADS=1``), as everywhere in asyncvid's CPU
figures. This machine's speed drifts, so the one-device run is made before and after the D-device
run and their mean is the reference. Results are JSON, speedups are ratios within the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import AsyncVidError


def _render(file: str, devices: int, folder: Path) -> dict:
    out = folder / f"out-{devices}-{time.monotonic_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "asyncvid.cli.main", "render", file, "--out", str(out), "--devices",
               str(devices), "--profile", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise AsyncVidError(f"render --devices {devices} failed: {lines[-1]}")
    profile = json.loads((out / "render_profile.json").read_text(encoding="utf-8"))
    return dict(devices=devices, command_wall_s=round(wall, 3), render_wall_s=profile["render_wall_s"],
                setup_s=profile["setup_s"], jobs=profile["jobs"], replicas=profile.get("replicas", 1),
                denoise_s=profile["denoise_s"])


def run_render_bench(file: str, devices: int, log=print) -> dict:
    """One device, D devices, one device again; the D-device speedup against their mean."""
    from .speed import hardware

    if devices < 2:
        raise AsyncVidError(f"--devices must be >= 2 to compare with one device, got {devices}")
    if not Path(file).is_file():
        raise AsyncVidError(f"{file}: job file not found")
    with tempfile.TemporaryDirectory(prefix="asyncvid-render-bench-") as tmp:
        runs = []
        for n in (1, devices, 1):
            runs.append(_render(file, n, Path(tmp)))
            r = runs[-1]
            log(f"render --devices {n}: {r['command_wall_s']:.1f} s for {r['jobs']} job(s) "
                f"({r['replicas']} replica(s); rendering {r['render_wall_s']:.1f} s after {r['setup_s']:.1f} s loading)")
    one = {k: (runs[0][k] + runs[2][k]) / 2 for k in ("command_wall_s", "render_wall_s")}
    many = runs[1]
    report = dict(file=str(Path(file).resolve()), devices=devices, hardware=hardware(), runs=runs,
                  one_device_mean=one,
                  speedup_command=one["command_wall_s"] / many["command_wall_s"],
                  speedup_rendering=one["render_wall_s"] / many["render_wall_s"])
    log(f"{devices} devices vs 1: {report['speedup_command']:.2f}x for the whole command, "
        f"{report['speedup_rendering']:.2f}x after loading")
    return report
