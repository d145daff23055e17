"""How well would a forecast predict a stage's input, on the *sequential* trajectory (open loop)?

Runs a model's untouched pipeline once and records, at every denoiser call, the state that crosses
the cut after the first ``--cut`` fraction of the units (what stage 1 of 2 receives), per call tag.
Then, per step s >= 2, compares the exact state h_s with what a stage would use in its place:

* reuse (AsyncDiff): h_{s-1};
* linear: h_{s-1} + r (h_{s-1} - h_{s-2}), r the timestep spacing ratio; damped: the step halved.

It prints the mean relative error of each, and the mean cosine between consecutive first differences
(near 1: the states drift smoothly, extrapolation pays; near 0 or negative: they turn every step).
This is the forecast's best case: in asynchronous stages the states come from a stale trajectory.

    python scripts/forecast_diagnostic.py --model shapes-wan --frames 9
"""

from __future__ import annotations

import torch

import _diagnostics


def main() -> None:
    parser = _diagnostics.parser(__doc__, "shapes-t2v", frames=8)
    parser.add_argument("--cut", type=float, default=0.5, help="fraction of the units before the cut")
    args = parser.parse_args()
    pipe, model, adapter, units = _diagnostics.pipeline(args.model)
    head = units[: max(1, round(len(units) * args.cut))]
    seen: dict[int, list] = {}  # call tag -> [(timestep, state tensors)]
    last = {"t": None, "tag": 0}
    forward = model.forward

    def recording(*a, **kw):
        call = adapter.split_call(a, kw)
        t = float(call.timestep.reshape(-1)[0])
        last["tag"] = last["tag"] + 1 if t == last["t"] else 0
        last["t"] = t
        ctx = adapter.context(call.sample.shape, call.timestep, {**call.cond, **call.extras})
        state = adapter.input_state(call.sample)
        for unit in head:
            state = unit.run(ctx, state)
        seen.setdefault(last["tag"], []).append((t, [x.double() for x in state.tensors()]))
        return forward(*a, **kw)

    model.forward = recording
    call = dict(prompt=args.prompt, num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=args.guidance, output_type="latent", generator=torch.Generator().manual_seed(0))
    if "Wan" in type(pipe).__name__:
        call["negative_prompt"] = "blurry"
    with torch.no_grad():
        pipe(**call)

    def norm(xs):
        return sum(float((x * x).sum()) for x in xs) ** 0.5

    for tag, states in sorted(seen.items()):
        errors = {"reuse": [], "linear": [], "damped:0.5": []}
        cosines = []
        for s in range(2, len(states)):
            (t0, h0), (t1, h1), (t2, h2) = states[s], states[s - 1], states[s - 2]
            r = (t0 - t1) / (t1 - t2)
            d1 = [a - b for a, b in zip(h1, h2)]
            scale = norm(h0)
            errors["reuse"].append(norm([a - b for a, b in zip(h1, h0)]) / scale)
            errors["linear"].append(norm([a + r * d - b for a, d, b in zip(h1, d1, h0)]) / scale)
            errors["damped:0.5"].append(norm([a + 0.5 * r * d - b for a, d, b in zip(h1, d1, h0)]) / scale)
            d0 = [a - b for a, b in zip(h0, h1)]
            dot = sum(float((a * b).sum()) for a, b in zip(d0, d1))
            cosines.append(dot / max(norm(d0) * norm(d1), 1e-30))
        mean = {k: sum(v) / len(v) for k, v in errors.items()}
        print(f"{args.model} call tag {tag}: cut after {len(head)} of {len(units)} units, {len(states)} steps; "
              f"mean relative error of the stage input: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
              + f"; mean cosine of consecutive differences {sum(cosines) / len(cosines):+.3f}")


if __name__ == "__main__":
    main()
