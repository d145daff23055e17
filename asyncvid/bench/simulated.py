"""``asyncvid bench --simulate TABLE``: layouts of up to 8 simulated devices, timed on this machine.

Every unit's arithmetic is a wait of its cost (``engine/simulate.py``); the pipeline loop, the
scheduler, the step messages and the real-shaped tensors between ranks are real. So the figures are
*simulated device time plus the engine's own real cost*, deterministic enough to hold the engine to
the ideal and the planner to its prediction (a miss is a modelling error, not noise).

Per device cost of a denoising step (``--step-ms``, both guidance branches) and per layout:

* ``efficiency`` = measured speedup over the untouched pipeline on the same simulated device /
  the ideal ``cfg * steps / (warmup + (steps - warmup) / (stages * stride))`` (warm-up included);
* ``split_bound``: the best any engine could do with this split (the slowest stage, the driver's
  own per-step work on stage 0, no messages), so ``efficiency / split_bound`` is the engine's part;
* the planner's prediction from the same table, with the pipeline's per-step work measured (the
  simulated untouched step minus its table cost) and the link measured between two local ranks;
* every rank's time per round by phase (``engine/phases.py``); with ``ASYNCVID_PHASE_TRACE=1`` also
  every phase boundary of every rank with its time (``events`` in the JSON), to draw a round.
"""

from __future__ import annotations

import os

import torch

from ..catalog.pipelines import denoiser_of, latent_side, profile_shape
from ..engine.simulate import CostTable
from .speed import _build, _timed_call

SIMULATED_NOTE = ("SIMULATED devices: every unit's compute is a wait from the cost table; the pipeline loop, "
                  "messages and transfers are real")


def ideal_speedup(steps: int, warmup: int, stages: int, stride: int, cfg: int = 1) -> float:
    """The issue's ideal per call: every parallel round N*S times faster, warm-up sequential; x cfg."""
    warm = min(warmup, steps) if stages * stride > 1 else 0
    return cfg * steps / (warm + (steps - warm) / (stages * stride))


def make_table(pipe, adapter, spec: str, step_s: float | None, cfg: dict) -> CostTable:
    """``uniform``, ``profile`` (this CPU's one-thread profile, scaled) or a JSON file, at the
    guidance batch of one step (2)."""
    names = [u.name for u in adapter.units()]
    if spec == "uniform":
        return CostTable.uniform(len(names), step_s or 0.05)
    if spec == "profile":
        from ..planner.profile import unit_costs
        from ..planner.report import pipeline_example_call

        call = pipeline_example_call(pipe, adapter, 2, cfg["frames"], latent_side(pipe, cfg))
        return CostTable.from_profile(unit_costs(adapter, call), 2, step_s)
    table = CostTable.load(spec, names)
    return table.scaled(step_s) if step_s else table


def _measure_calls(pipe, cfg: dict, repeats: int, clock=None) -> dict:
    """The fastest of ``repeats`` whole calls, after one set-up call: ``call_s`` (start to the last
    step's end), ``step_s`` (a step, after the first) and ``pre_loop_s`` (before the loop's first step)."""
    _timed_call(pipe, cfg)  # set-up: every simulated unit learns its output shape once, for real
    if clock is not None:
        clock.reset()
    marks = min((_timed_call(pipe, cfg) for _ in range(repeats)), key=lambda m: m[-1] - m[0])
    step = (marks[-1] - marks[1]) / (len(marks) - 2)
    return dict(call_s=marks[-1] - marks[0], step_s=step, pre_loop_s=max(0.0, marks[1] - marks[0] - step))


def baseline_rank(cfg: dict, spec: str, steps_ms: list[float | None]) -> dict:
    """One rank, one thread: per table, the untouched pipeline on the simulated device, then
    ``parallelize(stages=1)`` on it, then the untouched pipeline again (their mean is the reference)."""
    from ..models import adapter_for
    from ..pipelines.parallel import parallelize
    from ..pipelines.simulated import restore_denoiser, simulate_denoiser
    from ..planner.report import profile_pipeline

    torch.set_num_threads(1)
    pipe = _build(cfg)
    adapter = adapter_for(denoiser_of(pipe))
    latent = latent_side(pipe, cfg)
    profile = profile_pipeline(pipe, cfg["frames"], latent)
    rows = []
    for ms in steps_ms:
        table = make_table(pipe, adapter, spec, ms / 1e3 if ms else None, cfg)
        untouched = []
        for _ in range(2):
            simulate_denoiser(adapter, table)
            untouched.append(_measure_calls(pipe, cfg, cfg["repeats"]))
            restore_denoiser(adapter)
            if len(untouched) == 1:
                one = parallelize(pipe, stages=1, warmup=0, simulate=table)
                one_stage = _measure_calls(one, cfg, cfg["repeats"])
                pipe = one.undo()
        mean = {k: sum(u[k] for u in untouched) / 2 for k in untouched[0]}
        # the pipeline's own work per step, measured: a simulated untouched step minus its table cost
        rows.append(dict(step_ms=table.total * 1e3, table=table.to_dict(), untouched=untouched, reference=mean,
                         one_stage=one_stage, one_stage_overhead=one_stage["call_s"] / mean["call_s"] - 1,
                         pipeline_step_s=max(0.0, mean["step_s"] - table.total)))
    return dict(profile=profile, latent=latent, tables=rows)


def parallel_rank(cfg: dict, tables: list[dict], stages: int, stride: int, warmup: int, groups: int) -> list | None:
    """Every rank: each table in turn, the layout on simulated devices (a fresh pipeline per table,
    since the split is balanced on the table). Rank 0 returns the timings and every rank's phases."""
    import torch.distributed as dist

    from ..pipelines.parallel import parallelize

    out = []
    for table in tables:
        pipe = _build(cfg)
        latent = latent_side(pipe, cfg)
        ppipe = parallelize(pipe, stages=stages, stride=stride, warmup=warmup, split="auto", cfg=groups,
                            profile_shape=profile_shape(pipe, cfg["frames"], latent, groups),
                            simulate=CostTable.from_dict(table), forecast=cfg.get("forecast", "none"))
        runtime = ppipe.runtime
        if os.environ.get("ASYNCVID_PHASE_TRACE"):
            runtime.phases.events = []
        call_s = None
        if ppipe.is_driver:
            call_s = _measure_calls(ppipe, cfg, cfg["repeats"], runtime.phases)["call_s"]
            ppipe.close()
        else:
            ppipe(None)  # the set-up call
            runtime.phases.reset()
            ppipe.serve()
        row = (runtime.phases.per_round_ms(), dict(runtime.speculation), runtime.traffic.activation,
               runtime.phases.events)
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        out.append(dict(call_s=call_s, plan=ppipe.plan.to_dict(), phases_ms=[r[0] for r in rows],
                        speculation=[r[1] for r in rows], activation_bytes=[r[2] for r in rows],
                        **({"events": [r[3] for r in rows]} if rows[0][3] is not None else {})))
    return out if dist.get_rank() == 0 else None


_IDLE = {"compute", "wait for eps", "wait for input", "wait for message", "wait for peer", "pipeline"}


def _engine_ms(phases: dict[str, float]) -> float:
    """A rank's own engine work per round: everything but compute, waiting and the pipeline's work."""
    return sum(v for k, v in phases.items() if k not in _IDLE)


def _result(base: dict, row: dict, ran: dict, layout: tuple, cfg: dict, link) -> dict:
    from dataclasses import replace

    from ..planner.report import predict_from

    stages, stride, warmup, groups = layout
    steps, table = cfg["steps"], CostTable.from_dict(row["table"])
    ref = row["reference"]
    speedup = ref["call_s"] / ran["call_s"]
    ideal = ideal_speedup(steps, warmup, stages, stride, groups)
    profile = dict(base["profile"], costs_s=list(table.seconds), part_forward_s=table.total / 2,
                   overhead_s=row["pipeline_step_s"], shape=dict(base["profile"]["shape"], batch=table.batch))
    ranges = [tuple(r) for r in ran["plan"]["ranges"]]
    # the engine's own work per round on each stage (the phase clock's measurement, slowest group)
    # (the driver's context is in the measured pipeline work already: the untouched hook computes it too)
    engine = [max(_engine_ms(ran["phases_ms"][g * stages + k]) - (ran["phases_ms"][0].get("context", 0.0) if g == k == 0
                                                                  else 0.0) for g in range(groups)) / 1e3
              for k in range(stages)]
    # simulated devices wait on the rank's thread while gloo's threads move the bytes: links overlap compute
    sim_link = replace(link, overlaps_compute=True)
    pred = predict_from(profile, stages, stride, warmup, steps, sim_link, ranges, cfg=groups, engine_s=engine)
    free = predict_from(profile, stages, stride, warmup, steps, replace(link, bytes_per_s=float("inf"), latency_s=0.0),
                        ranges, cfg=groups)
    pre = ref["pre_loop_s"]
    sequential = pre + steps * pred.sequential_step_s
    bound = sequential / (pre + free.video_s) / ideal
    predicted_call = pre + pred.video_s
    return dict(step_ms=row["step_ms"], stages=stages, stride=stride, warmup=warmup, cfg=groups, ranks=stages * groups,
                call_s=ran["call_s"], reference_call_s=ref["call_s"], speedup=speedup, ideal=ideal,
                efficiency=speedup / ideal, split_bound=bound, engine_share=speedup / ideal / bound,
                predicted_call_s=predicted_call, predicted_speedup=sequential / predicted_call,
                planner_error=predicted_call / ran["call_s"] - 1, ranges=ranges,
                engine_ms_per_round=[_engine_ms(p) for p in ran["phases_ms"]], phases_ms_per_round=ran["phases_ms"],
                speculation=ran["speculation"])


def run_simulated_bench(cfg: dict, configs: list[tuple], spec: str, steps_ms: list[float | None], log=print) -> dict:
    """The untouched pipeline and every layout on simulated devices, for each per-step device cost."""
    from ..launch import launch_local
    from ..planner.links import measure_local_link
    from ..progress import progress
    from .speed import hardware

    log(SIMULATED_NOTE)
    base = launch_local(baseline_rank, 1, cfg, spec, steps_ms, threads_per_rank=1)
    cfg = dict(cfg, latent=base["latent"])
    for row in base["tables"]:
        log(f"[simulated] {row['step_ms']:.0f} ms/step: untouched {row['reference']['call_s']:.3f} s/call, "
            f"parallelize(stages=1) {row['one_stage']['call_s']:.3f} s ({100 * row['one_stage_overhead']:+.2f} %), "
            f"pipeline's own work {1e3 * row['pipeline_step_s']:.2f} ms/step")
    link = measure_local_link()
    report = {"simulated": True, "note": SIMULATED_NOTE, "cost_table": spec, "config": cfg, "hardware": hardware(),
              "link": link.__dict__, "profile": base["profile"],
              "baseline": [{k: v for k, v in row.items() if k != "table"} for row in base["tables"]],
              "tables": [row["table"] for row in base["tables"]], "results": []}
    tables = [row["table"] for row in base["tables"]]
    forecasts = cfg.get("forecasts", ("none",))
    layouts = [(c, f) for c in configs for f in (forecasts if c[0] > 1 else ("none",))]
    with progress(len(layouts), "layouts") as advance:
        for (stages, stride, warmup, groups), forecast in layouts:
            ran = launch_local(parallel_rank, stages * groups, dict(cfg, forecast=forecast), tables, stages, stride,
                               warmup, groups)
            for row, one in zip(base["tables"], ran):
                res = _result(base, row, one, (stages, stride, warmup, groups), cfg, link)
                res["forecast"] = forecast
                report["results"].append(res)
                log(f"[simulated] {res['step_ms']:.0f} ms/step N={stages} S={stride} w={warmup} cfg={groups} "
                    f"forecast={forecast}: "
                    f"{res['speedup']:.2f}x of ideal {res['ideal']:.2f}x = {100 * res['efficiency']:.1f} % "
                    f"(split bound {100 * res['split_bound']:.1f} %), planner {100 * res['planner_error']:+.1f} %, "
                    f"engine {max(res['engine_ms_per_round']):.3f} ms/round")
            advance()
    return report


def markdown(report: dict) -> str:
    rows = [f"_{report['note']}; cost table: {report['cost_table']}; {report['hardware']['cpu']}, "
            f"{report['hardware']['cores']} cores._", "",
            "| device ms/step | layout | ranks | speedup | ideal | efficiency | split bound | engine share | "
            "planner error | engine ms/round (driver, slowest worker) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for b in report["baseline"]:
        rows.append(f"| {b['step_ms']:.0f} | untouched vs parallelize(stages=1) | 1 | "
                    f"{b['reference']['call_s'] / b['one_stage']['call_s']:.4f}x | 1.00x | "
                    f"{100 * b['reference']['call_s'] / b['one_stage']['call_s']:.2f} % | | | | |")
    for r in report["results"]:
        workers = r["engine_ms_per_round"][1:] or [0.0]
        forecast = "" if r.get("forecast", "none") == "none" else f" forecast {r['forecast']}"
        rows.append(f"| {r['step_ms']:.0f} | N={r['stages']} S={r['stride']} w={r['warmup']} cfg={r['cfg']}{forecast} | "
                    f"{r['ranks']} | {r['speedup']:.2f}x | {r['ideal']:.2f}x | {100 * r['efficiency']:.1f} % | "
                    f"{100 * r['split_bound']:.1f} % | {100 * r['engine_share']:.1f} % | "
                    f"{100 * r['planner_error']:+.1f} % | {r['engine_ms_per_round'][0]:.3f}, {max(workers):.3f} |")
    return "\n".join(rows) + "\n"
