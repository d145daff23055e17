"""`asyncvid bench --simulate` end to end, and a diffusers pipeline on simulated devices."""

from __future__ import annotations

import json

import pytest

import _workers
from asyncvid.cli.main import main
from asyncvid.engine.simulate import CostTable
from asyncvid.launch import launch_local

pytestmark = pytest.mark.multiprocess

TINY_UNITS = 20  # the tiny AnimateDiff UNet's units


def test_a_pipeline_on_simulated_devices_moves_what_the_real_one_moves():
    table = CostTable.uniform(TINY_UNITS, 0.02)
    split = [["conv_in", "down_blocks"], ["mid_block", "up_blocks", "conv_out"]]  # the same cut in both runs
    jobs = [("render", (dict(stages=2, warmup=1, split=split),)),
            ("render", (dict(stages=2, warmup=1, split=split, simulate=table),))]
    real, simulated = launch_local(_workers.run_many, 2, jobs, timeout=600)
    assert simulated["frames"][0].shape == real["frames"][0].shape
    for k in range(2):
        want, got = real["stats"][k]["traffic"], simulated["stats"][k]["traffic"]
        assert got["activation_bytes_per_step"] == want["activation_bytes_per_step"]
        assert got["activation_bytes"] == want["activation_bytes"] > 0
        assert got["conditioning_bytes"] == want["conditioning_bytes"]


def test_bench_simulate_reports_efficiency_planner_error_and_phases(tmp_path, capsys):
    out, md = tmp_path / "sim.json", tmp_path / "sim.md"
    assert main(["bench", "--simulate", "uniform", "--step-ms", "20", "--model", "animatediff", "--preset", "tiny",
                 "--configs", "2x1", "1x1c2", "--steps", "4", "--repeats", "1", "--json", str(out),
                 "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    assert report["simulated"] is True and "SIMULATED" in report["note"] and "SIMULATED" in md.read_text()
    assert len(report["results"]) == 2
    base = report["baseline"][0]
    assert base["step_ms"] == pytest.approx(20.0)
    # the untouched pipeline on the simulated device waits at least the table's cost per step
    assert base["reference"]["step_s"] >= 0.02
    for r in report["results"]:
        assert r["ideal"] == pytest.approx(4 / (1 + 3 / 2) if r["stages"] == 2 else 2.0)
        assert 0 < r["efficiency"] == pytest.approx(r["speedup"] / r["ideal"])
        assert r["planner_error"] == pytest.approx(r["predicted_call_s"] / r["call_s"] - 1)
        assert len(r["phases_ms_per_round"]) == r["ranks"]
        assert r["phases_ms_per_round"][0]["compute"] > 0
