"""Forecasting the stale stage input (``engine/forecast.py``, ``parallelize(..., forecast=...)``).

The extrapolation weights are checked against polynomials they must reproduce exactly; the ranks'
outputs against an independent reference recurrence with the forecast written another way
(Newton's divided differences, ``tests/helpers/reference_tags.py``), per call tag, at stride 1 and 2,
on 2 and 3 stages; ``forecast="none"`` bit-identical to a pipeline parallelized without the option;
the same bytes on the wire with and without a forecast; the kept states counted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _forecast
import _variants
from asyncvid.engine.forecast import Forecast, History, weights
from asyncvid.engine.units import Carried
from asyncvid.errors import AsyncVidError

maxdiff = _variants.maxdiff


# ---------------------------------------------------------------- the arithmetic (fast)
@pytest.mark.parametrize("spec,order,gain", [("none", 0, 1.0), ("linear", 1, 1.0), ("quadratic", 2, 1.0),
                                             ("damped", 1, 0.5), ("Damped:0.25", 1, 0.25), (None, 0, 1.0)])
def test_names_parse_to_an_order_and_a_gain(spec, order, gain):
    f = Forecast.parse(spec)
    assert (f.order, f.gain) == (order, gain)
    assert Forecast.parse(f.name) == f


@pytest.mark.parametrize("spec", ["cubic", "linear:0.5", "damped:0", "damped:1.5", "damped:x"])
def test_bad_forecasts_are_one_line_errors(spec):
    with pytest.raises(AsyncVidError) as err:
        Forecast.parse(spec)
    assert "\n" not in str(err.value) and "forecast" in str(err.value)


def test_weights_reproduce_polynomials_of_their_degree_on_uneven_steps():
    times = [700.0, 810.0, 999.0]  # newest first, uneven spacing (a real schedule's)
    target = 555.0
    line = lambda t: 3.0 - 0.02 * t  # noqa: E731
    parabola = lambda t: 1.0 + 0.5 * t - 1e-3 * t * t  # noqa: E731
    w1 = weights(times, target, 1)
    assert len(w1) == 2 and sum(w1) == pytest.approx(1.0)
    assert sum(w * line(t) for w, t in zip(w1, times)) == pytest.approx(line(target))
    w2 = weights(times, target, 2)
    assert sum(w * parabola(t) for w, t in zip(w2, times)) == pytest.approx(parabola(target))
    # a parabola is not a line: first order misses it, so the test above could fail
    assert sum(w * parabola(t) for w, t in zip(w1, times)) != pytest.approx(parabola(target))
    # damped: the step scaled
    wd = weights(times, target, 1, gain=0.5)
    assert wd[1] == pytest.approx(0.5 * w1[1])


def test_repeated_timesteps_fall_back_to_a_lower_order():
    assert weights([500.0, 500.0, 900.0], 400.0, 2) == [1.0]
    assert len(weights([500.0, 800.0, 500.0], 400.0, 2)) == 2
    assert weights([500.0], 400.0, 2) == [1.0]


def test_history_keeps_order_plus_one_states_and_restarts():
    h = History(Forecast.parse("linear"))
    state = lambda v: Carried(torch.full((2,), float(v)), (torch.full((3,), 2.0 * v),))  # noqa: E731
    h.add(900.0, state(1))
    assert h.predict(800.0).h is h.points[0][1].h  # one state: as is, not copied
    h.add(800.0, state(2))
    h.add(700.0, state(3))
    assert [t for t, _ in h.points] == [700.0, 800.0]
    out = h.predict(600.0)
    assert torch.equal(out.h, torch.full((2,), 4.0)) and torch.equal(out.skips[0], torch.full((3,), 8.0))
    assert torch.equal(h.points[0][1].h, torch.full((2,), 3.0))  # the kept states untouched
    h.restart()
    assert len(h.points) == 1 and h.predict(600.0).h is h.points[0][1].h


# ---------------------------------------------------------------- ranks against the reference
AD2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]
AD3 = [["conv_in", "down_blocks.0"], ["down_blocks.1", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]
WAN2 = [["patch_embedding", "blocks.0", "blocks.1"], ["blocks.2", "blocks.3", "proj_out"]]
WAN3 = [["patch_embedding", "blocks.0"], ["blocks.1", "blocks.2"], ["blocks.3", "norm_out"]]
ORDER = {"none": (0, 1.0), "linear": (1, 1.0), "quadratic": (2, 1.0), "damped:0.5": (1, 0.5)}
#: name -> (family, world size, options); stride 2 runs with the reference's timestep shift, as users do
CASES = {
    "ad-default": ("animatediff", 2, dict(split=AD2)),
    "ad-none": ("animatediff", 2, dict(split=AD2, forecast="none")),
    "ad-linear": ("animatediff", 2, dict(split=AD2, forecast="linear")),
    "ad-quadratic": ("animatediff", 2, dict(split=AD2, forecast="quadratic")),
    "ad-linear-s2": ("animatediff", 2, dict(split=AD2, forecast="linear", stride=2)),
    "ad-damped-s2-shift": ("animatediff", 2, dict(split=AD2, forecast="damped:0.5", stride=2, time_shift=True)),
    "wan-linear": ("wan", 2, dict(split=WAN2, forecast="linear")),
    "wan-quadratic-s2": ("wan", 2, dict(split=WAN2, forecast="quadratic", stride=2)),
    "ad-linear-3": ("animatediff", 3, dict(split=AD3, forecast="linear")),
    "wan-quadratic-3": ("wan", 3, dict(split=WAN3, forecast="quadratic")),
}


@pytest.fixture(scope="module")
def runs():
    groups: dict = {}
    for name, (family, world, options) in CASES.items():
        groups.setdefault(world, {})[name] = ("_forecast.render", (family, dict(options, stages=world, warmup=1)))
    return _variants.run_groups(groups)


def _reference(runs, name: str, forecast: str | None = None):
    """The reference recurrence of case ``name`` on the split its ranks used (``forecast`` overrides)."""
    family, _, options = CASES[name]
    ranges = [tuple(r) for r in runs[name]["stats"][0]["ranges"]]
    rest = {k: v for k, v in options.items() if k in ("stride", "time_shift")}
    return _forecast.reference(family, ranges, 1, forecast=ORDER[forecast or options["forecast"]], **rest)


@pytest.mark.multiprocess
def test_forecast_none_is_bit_identical_to_no_forecast(runs):
    assert np.array_equal(np.asarray(runs["ad-none"]["frames"]), np.asarray(runs["ad-default"]["frames"]))


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", [n for n in CASES if n not in ("ad-default", "ad-none")])
def test_forecast_equals_the_reference_recurrence_and_changes_the_video(runs, name, one_thread):
    got = runs[name]["frames"]
    assert maxdiff(got, _reference(runs, name)) <= 1e-4
    assert maxdiff(got, _reference(runs, name, forecast="none")) > 1e-3  # the forecast did something
    assert maxdiff(got, _forecast.sequential(CASES[name][0])) > 1e-3  # and it is still asynchronous


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", ["ad-linear", "ad-quadratic", "wan-linear", "wan-quadratic-s2"])
def test_the_forecast_sends_the_same_bytes_and_keeps_order_states_per_tag(runs, name):
    plain = "ad-none" if name.startswith("ad") else None
    stats = runs[name]["stats"]
    if plain is not None:
        assert [s["traffic"]["activation_bytes_per_step"] for s in stats] == \
            [s["traffic"]["activation_bytes_per_step"] for s in runs[plain]["stats"]]
    hop = stats[0]["traffic"]["activation_bytes_per_step"][0]  # rank 0 sends one stage output per call
    order = ORDER[CASES[name][2]["forecast"]][0]
    worker = stats[1]
    assert worker["forecast_bytes"] == order * hop * worker["streams"]
    assert stats[0]["forecast_bytes"] == 0  # the driver's stage is never stale
    assert worker["streams"] == (2 if name.startswith("wan") else 1)
