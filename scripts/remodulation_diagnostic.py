"""Would re-modulating a stale DiT stream for the current timestep help (issue 27, item 2)? Open loop.

A Wan block adds its branches to the residual stream through gates computed from the timestep:
``h += g1(t) * attn(...)``, ``h += cross(...)``, ``h += g2(t) * ffn(...)``. A stage that receives
the stream of step s-1 (stride 1; s-2 at stride 2) in place of step s's could re-express it for
step s's gates: ``h + sum_b (g1_b(t_s) - g1_b(t_prev)) * attn_b + (g2_b(t_s) - g2_b(t_prev)) * ffn_b``
over the blocks before the cut. That needs every such block's two branch outputs on the receiving
rank (two states per block more on the wire) or the last block's only (``remod-last``).

This script runs the untouched pipeline once, records at every call the stream after the first
``--cut`` of the units and each earlier block's branch outputs and gates, and compares, per step,
the exact stream with: reuse (AsyncDiff), ``damped:0.5`` (the forecast), the two re-modulations,
and re-modulation plus the damped forecast. The open loop is each candidate's best case.

    python scripts/remodulation_diagnostic.py --frames 9
"""

from __future__ import annotations

import torch

import _diagnostics


def norm(xs) -> float:
    return sum(float((x * x).sum()) for x in xs) ** 0.5


def main() -> None:
    parser = _diagnostics.parser(__doc__, "shapes-wan", frames=9)
    parser.add_argument("--cut", type=float, nargs="+", default=[0.5], help="fractions of the units before the cut")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    pipe, model, adapter, units = _diagnostics.pipeline(args.model)
    for cut in args.cut:
        totals: dict[tuple, list] = {}
        for seed in range(args.seeds):
            seen = record(pipe, model, adapter, units, cut, args, seed)
            for tag, states in seen.items():
                for gap in (1, 2):
                    for name, value in compare(states, gap).items():
                        totals.setdefault((tag, gap, name), []).extend(value)
        head = max(1, round(len(units) * cut))
        for (tag, gap), names in group(totals).items():
            print(f"{args.model} cut after {head} of {len(units)} units, call tag {tag}, stale by {gap} step(s): "
                  + ", ".join(f"{name} {sum(v) / len(v):.4f}" for name, v in names.items()))


def group(totals: dict) -> dict:
    out: dict = {}
    for (tag, gap, name), values in sorted(totals.items(), key=lambda kv: kv[0][:2]):
        out.setdefault((tag, gap), {})[name] = values
    return out


def record(pipe, model, adapter, units, cut, args, seed) -> dict[int, list]:
    """Per call tag, per call: (timestep, stream at the cut, [(g1, attn, g2, ffn) per block before it])."""
    head = units[: max(1, round(len(units) * cut))]
    blocks = [model.blocks[int(u.name.split(".")[1])] for u in head if u.name.startswith("blocks.")]
    branches: dict[int, dict] = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.attn1.register_forward_hook(lambda m, a, out, i=i: branches.setdefault(i, {}).update(attn=out)))
        handles.append(block.ffn.register_forward_hook(lambda m, a, out, i=i: branches.setdefault(i, {}).update(ffn=out)))
    seen: dict[int, list] = {}
    last = {"t": None, "tag": 0}
    forward = model.forward

    def recording(*a, **kw):
        call = adapter.split_call(a, kw)
        t = float(call.timestep.reshape(-1)[0])
        last["tag"] = last["tag"] + 1 if t == last["t"] else 0
        last["t"] = t
        ctx = adapter.context(call.sample.shape, call.timestep, {**call.cond, **call.extras})
        state = adapter.input_state(call.sample)
        branches.clear()
        for unit in head:
            state = unit.run(ctx, state)
        parts = []
        for i, block in enumerate(blocks):
            gates = (block.scale_shift_table + ctx.timestep_proj.float()).chunk(6, dim=1)
            parts.append((gates[2].double(), branches[i]["attn"].double(), gates[5].double(), branches[i]["ffn"].double()))
        seen.setdefault(last["tag"], []).append((t, [x.double() for x in state.tensors()][0], parts))
        return forward(*a, **kw)

    model.forward = recording
    call = dict(prompt=args.prompt, num_frames=args.frames, height=args.size, width=args.size,
                num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="latent",
                negative_prompt="blurry", generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            pipe(**call)
    finally:
        model.forward = forward
        for h in handles:
            h.remove()
    return seen


def remodulated(h_prev, parts_prev, parts_now, which) -> torch.Tensor:
    out = h_prev.clone()
    for (g1p, ap, g2p, fp), (g1n, _, g2n, _) in [list(zip(parts_prev, parts_now))[i] for i in which]:
        out = out + (g1n - g1p) * ap + (g2n - g2p) * fp
    return out


def compare(states, gap: int) -> dict[str, list[float]]:
    """Relative error of each candidate for the stream at step s, from what a stage holds (s-gap, s-2 gap)."""
    out: dict[str, list[float]] = {k: [] for k in ("reuse", "damped:0.5", "remod-last", "remod-all", "remod-all+damped:0.5")}
    for s in range(2 * gap, len(states)):
        (t0, h0, p0), (t1, h1, p1), (t2, h2, _) = states[s], states[s - gap], states[s - 2 * gap]
        r = (t0 - t1) / (t1 - t2)
        scale = norm([h0])
        last, every = [len(p1) - 1], range(len(p1))
        damped = h1 + 0.5 * r * (h1 - h2)
        out["reuse"].append(norm([h1 - h0]) / scale)
        out["damped:0.5"].append(norm([damped - h0]) / scale)
        out["remod-last"].append(norm([remodulated(h1, p1, p0, last) - h0]) / scale)
        out["remod-all"].append(norm([remodulated(h1, p1, p0, every) - h0]) / scale)
        out["remod-all+damped:0.5"].append(norm([remodulated(damped, p1, p0, every) - h0]) / scale)
    return out


if __name__ == "__main__":
    main()
