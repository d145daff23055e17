"""Simulated devices: cost tables, and the engine on them moving exactly what it moves for real."""

from __future__ import annotations

import json

import pytest
import torch

import toy
from asyncvid.bench.simulated import ideal_speedup
from asyncvid.engine.simulate import CostTable, SimulatedDevice
from asyncvid.engine.units import Carried
from asyncvid.errors import AsyncVidError
from asyncvid.launch import launch_local

NAMES = [f"layers.{i}" for i in range(toy.UNITS)]


def test_tables_uniform_scaled_and_per_batch():
    table = CostTable.uniform(4, 0.02)
    assert table.seconds == (0.005,) * 4 and table.batch == 2
    scaled = CostTable.from_profile([1.0, 3.0], batch=2, step_s=0.2)
    assert scaled.seconds == pytest.approx((0.05, 0.15))
    assert scaled.for_batch(1) == pytest.approx([0.025, 0.075])  # a guidance part of half the batch
    assert CostTable.from_dict(scaled.to_dict()) == scaled


def test_table_from_a_file_is_checked_against_the_units(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"units": NAMES, "seconds": [0.001] * toy.UNITS, "batch": 1}))
    table = CostTable.load(path, NAMES)
    assert table.batch == 1 and len(table.seconds) == toy.UNITS and "gpu.json" in table.source
    path.write_text(json.dumps({"seconds": {n: 0.002 for n in NAMES}}))
    assert CostTable.load(path, NAMES).seconds == (0.002,) * toy.UNITS
    path.write_text(json.dumps({"units": NAMES[:-1], "seconds": [0.001] * (toy.UNITS - 1)}))
    with pytest.raises(AsyncVidError, match="do not match the model's"):
        CostTable.load(path, NAMES)
    with pytest.raises(AsyncVidError, match="not found"):
        CostTable.load(tmp_path / "missing.json", NAMES)
    with pytest.raises(AsyncVidError, match="non-negative"):
        CostTable((0.1, -1.0))


def test_a_simulated_unit_computes_once_per_shape_then_returns_the_same_shape():
    calls = []
    adapter = toy.ToyAdapter(toy.ToyModel())
    unit = adapter.units()[1]
    counted = type(unit)(unit.name, unit.modules, lambda ctx, st: calls.append(1) or unit.run(ctx, st))
    device = SimulatedDevice(CostTable((0.0, 0.0), batch=2))
    sim = device.units([adapter.units()[0], counted])[1]
    ctx = adapter.context(None, torch.tensor([10]), {"bias": torch.zeros(toy.CHANNELS)})
    with torch.no_grad():
        for shape in [(2, 4, 5, 5), (2, 4, 5, 5), (1, 4, 5, 5), (2, 4, 5, 5)]:
            out = sim.run(ctx, Carried(torch.randn(shape)))
            assert out.h.shape == shape
    assert len(calls) == 2  # one real computation per input shape


def test_the_ideal_of_the_issue():
    assert ideal_speedup(25, 1, 2, 1) == pytest.approx(25 / (1 + 24 / 2))
    assert ideal_speedup(25, 1, 8, 2, cfg=2) == pytest.approx(2 * 25 / (1 + 24 / 16))
    assert ideal_speedup(25, 3, 1, 1) == 1.0


CASES = [
    dict(options=dict(warmup=1), steps=6, tags=2, rebuild_cond=False),
    dict(options=dict(warmup=1), steps=6, tags=2, rebuild_cond=False,
         simulate=CostTable(tuple([0.0] * toy.UNITS))),
    # stage 1's units cost three times stage 0's
    dict(options=dict(warmup=1, speculate=False), steps=6, tags=1, rebuild_cond=False,
         simulate=CostTable((0.004,) * 3 + (0.012,) * 3)),
]


@pytest.mark.multiprocess
class TestOnTwoRanks:
    @pytest.fixture(scope="class")
    def ranks(self):
        return launch_local(toy.run_cases, 2, 2, CASES, timeout=300)

    def test_simulated_devices_move_the_same_bytes_as_real_ones(self, ranks):
        real, simulated = ranks[0], ranks[1]
        for k in range(2):
            assert simulated["stats"][k]["traffic"] == real["stats"][k]["traffic"]
            assert real["stats"][k]["traffic"]["threaded_sends"] == 0  # small states: posted by the rank itself
            assert simulated["stats"][k]["traffic"]["activation_bytes"] > 0
        assert [x.shape for x in simulated["xs"]] == [x.shape for x in real["xs"]]

    def test_simulated_compute_follows_the_cost_table(self, ranks):
        stats = ranks[2]["stats"]
        compute = [s["phases"]["compute"] / s["rounds"] for s in stats]
        assert compute[1] > compute[0]
        assert 2.0 < compute[1] / compute[0] < 4.5  # the table says 3 (waits, not arithmetic)


@pytest.mark.multiprocess
def test_states_posted_from_the_sender_thread_keep_the_recurrence_exact(monkeypatch):
    """Every state (not only large ones) through the sender thread, on tagged links of their own groups."""
    monkeypatch.setenv("ASYNCVID_SEND_THREAD_MIN_BYTES", "0")
    cases = [dict(options=dict(warmup=1), steps=6, tags=2, rebuild_cond=True),
             dict(options=dict(warmup=1, stride=2), steps=7, tags=1, rebuild_cond=False)]
    results = launch_local(toy.run_cases, 3, 3, cases, timeout=300)
    assert all(s["traffic"]["threaded_sends"] > 0 for s in results[0]["stats"])
    for case, result in zip(cases, results):
        ref = toy.reference(result["ranges"], case["options"], case["steps"], case["tags"], case["rebuild_cond"])
        for got, want in zip(result["xs"], ref):
            assert torch.allclose(got, want, atol=1e-6, rtol=0)
