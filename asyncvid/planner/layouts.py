"""Every way to use D devices, ranked: replicas x CFG groups x stages x stride x warm-up (x forecast).

A layout gives each video G = stages x cfg devices and runs D // G replicas side by side. Its
per-video speedup (latency) comes from :func:`~.report.predict_from`; its throughput (videos per
unit of time, relative to one device) is replicas x that speedup. Its fidelity comes from an
``asyncvid eval fidelity`` report when one is given: CFG groups and replicas are exact, so a
layout costs the fidelity of its stages x stride x warm-up alone (one stage: exact). A stale-input
forecast costs no speed (``engine/forecast.py``), so each multi-stage layout takes the forecast the
report measured best for it (``none`` when it measured none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import AsyncVidError
from .links import LinkModel
from .predict import Prediction
from .report import predict_from

OBJECTIVES = ("latency", "throughput")


@dataclass
class Layout:
    replicas: int
    cfg: int
    stages: int
    stride: int
    warmup: int
    prediction: Prediction
    psnr_db: float | None = None  # vs the sequential pipeline; inf = exact; None = not measured
    measured: tuple[str, float] | None = None  # (how: "simulated" / "measured", per-video speedup) from a bench
    forecast: str = "none"  # the stale-input forecast (``parallelize(..., forecast=)``)

    def how_measured(self) -> str:
        """How this layout's speed is known: simulated devices, measured on this machine, or predicted only."""
        if self.measured is None:
            return "predicted only"
        return f"{self.measured[0]} {self.measured[1]:.2f}x"

    @property
    def devices(self) -> int:
        return self.replicas * self.cfg * self.stages

    @property
    def latency_speedup(self) -> float:
        return self.prediction.speedup_per_video

    @property
    def throughput_speedup(self) -> float:
        return self.replicas * self.prediction.speedup_per_video

    def name(self) -> str:
        parts = [f"{self.replicas} replica(s)", f"cfg {self.cfg}", f"{self.stages} stage(s)"]
        if self.stages > 1:
            parts += [f"stride {self.stride}", f"warm-up {self.warmup}"]
            if self.forecast != "none":
                parts.append(f"forecast {self.forecast}")
        return " x ".join(parts[:3]) + (f", {', '.join(parts[3:])}" if parts[3:] else "")

    def to_dict(self) -> dict:
        return dict(replicas=self.replicas, cfg=self.cfg, stages=self.stages, stride=self.stride, warmup=self.warmup,
                    forecast=self.forecast,
                    devices=self.devices, latency_speedup=self.latency_speedup,
                    throughput_speedup=self.throughput_speedup, psnr_db=self.psnr_db,
                    video_s=self.prediction.video_s, how_measured=self.how_measured())


def fidelity_table(report: dict | None) -> dict[tuple[int, int, int], tuple[str, float]]:
    """(stages, stride, warm-up) -> (forecast, mean PSNR in dB) of the best forecast measured for it,
    from an ``asyncvid eval fidelity`` report (reports before forecasts: ``none``)."""
    if report is None:
        return {}
    try:
        best: dict[tuple[int, int, int], tuple[str, float]] = {}
        for r in report["configs"]:
            key, row = (r["stages"], r["stride"], r["warmup"]), (r.get("forecast", "none"), float(r["metrics"]["psnr_db"]))
            if key not in best or row[1] > best[key][1]:
                best[key] = row
        return best
    except (KeyError, TypeError) as exc:
        raise AsyncVidError(f"not an asyncvid eval fidelity report (missing {exc})") from None


def bench_table(reports: list[dict]) -> dict[tuple[int, int, int, int], tuple[str, float]]:
    """(stages, stride, warm-up, cfg) -> (how, per-video speedup) from ``asyncvid bench --json`` reports:
    ``simulated`` for ``--simulate`` reports (their first step cost), ``measured`` for real ones."""
    table: dict[tuple[int, int, int, int], tuple[str, float]] = {}
    for report in reports:
        try:
            results = report["results"]
            if report.get("simulated"):
                first = results[0]["step_ms"] if results else None
                rows = [(r, "simulated", r["speedup"]) for r in results if r["step_ms"] == first]
            else:
                rows = [(r, "measured", r["end_to_end_speedup_vs_one_thread"]) for r in results]
            for r, how, speedup in rows:
                table[(r["stages"], r["stride"], r["warmup"], r.get("cfg", 1))] = (how, float(speedup))
        except (KeyError, TypeError, IndexError) as exc:
            raise AsyncVidError(f"not an asyncvid bench report (missing {exc})") from None
    return table


def enumerate_layouts(profile: dict, devices: int, steps: int, link: LinkModel, fidelity: dict | None = None,
                      strides=(1, 2), warmups=(1, 3), measured: dict | None = None) -> list[Layout]:
    """Every layout that fits ``devices``: stages 1..D, cfg 1 or the profile's guidance batch,
    stride and warm-up from the given choices (one stage has neither), replicas filling the rest."""
    if devices < 1:
        raise AsyncVidError(f"--devices must be >= 1, got {devices}")
    units = len(profile["costs_s"])
    batch = profile.get("shape", {}).get("batch", 2)
    cfgs = [1] + ([batch] if batch > 1 else [])
    table = fidelity or {}
    out = []
    for cfg in cfgs:
        for stages in range(1, min(devices // cfg, units) + 1):
            group = stages * cfg
            options = [(1, 1)] if stages == 1 else [(s, w) for s in strides for w in warmups if w < steps]
            for stride, warmup in options:
                pred = predict_from(profile, stages, stride, warmup, steps, link, cfg=cfg)
                forecast, psnr = ("none", math.inf) if stages == 1 else table.get((stages, stride, warmup), ("none", None))
                speed = (measured or {}).get((stages, stride, warmup, cfg))
                out.append(Layout(devices // group, cfg, stages, stride, warmup, pred, psnr, speed, forecast))
    return out


def rank_layouts(layouts: list[Layout], objective: str, min_psnr: float | None = None) -> list[Layout]:
    """Best first for ``objective``; ties go to better fidelity, then to fewer devices per video.
    When some layouts carry a measured fidelity, the unmeasured ones come after them (their cost is
    unknown). ``min_psnr`` drops layouts measured below it, and unmeasured multi-stage ones."""
    if objective not in OBJECTIVES:
        raise AsyncVidError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if min_psnr is not None:
        layouts = [lay for lay in layouts if lay.psnr_db is not None and lay.psnr_db >= min_psnr]
        if not layouts:
            raise AsyncVidError(f"no layout reaches {min_psnr:g} dB with the fidelity measured")

    measured = any(lay.psnr_db is not None and lay.stages > 1 for lay in layouts)

    def key(lay: Layout):
        speed = lay.latency_speedup if objective == "latency" else lay.throughput_speedup
        fid = lay.psnr_db if lay.psnr_db is not None else -1.0
        return (measured and lay.psnr_db is None, -round(speed, 2), -fid, lay.cfg * lay.stages)

    return sorted(layouts, key=key)


def why_first(ranked: list[Layout], objective: str) -> str:
    """One sentence on why the first layout won."""
    best = ranked[0]
    speed = "per-video speedup" if objective == "latency" else "videos per unit of time"
    value = best.latency_speedup if objective == "latency" else best.throughput_speedup
    fid = "exact" if best.psnr_db == math.inf else ("fidelity not measured" if best.psnr_db is None
                                                     else f"{best.psnr_db:.1f} dB PSNR vs sequential")
    reason = f"picked {best.name()}: the highest predicted {speed} ({value:.2f}x), {fid}"
    exact = [lay for lay in ranked if lay.psnr_db == math.inf]
    if best.psnr_db != math.inf and exact:
        alt = exact[0]
        alt_value = alt.latency_speedup if objective == "latency" else alt.throughput_speedup
        reason += f"; the best exact layout is {alt.name()} at {alt_value:.2f}x"
    return reason


def describe_layouts(ranked: list[Layout], objective: str, devices: int, top: int = 8) -> str:
    lines = [f"layouts for {devices} device(s), best {objective} first (predicted; PSNR vs the sequential pipeline):",
             "  # | devices/video | layout | s/video | per-video speedup | throughput | PSNR | speed known from"]
    for i, lay in enumerate(ranked[:top], start=1):
        psnr = "exact" if lay.psnr_db == math.inf else ("-" if lay.psnr_db is None else f"{lay.psnr_db:.1f} dB")
        lines.append(f"{i:3d} | {lay.cfg * lay.stages:13d} | {lay.name()} | {lay.prediction.video_s:.2f} | "
                     f"{lay.latency_speedup:.2f}x | {lay.throughput_speedup:.2f}x | {psnr} | {lay.how_measured()}")
    lines.append(why_first(ranked, objective))
    return "\n".join(lines)
