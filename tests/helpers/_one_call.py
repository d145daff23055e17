"""A script that makes one call and exits at once, on every rank (no launcher needed beyond the
torch.distributed environment variables): the toy engine, so each launch costs one torch import."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import toy  # noqa: E402
from asyncvid.distributed.env import default_device, ensure_process_group  # noqa: E402
from asyncvid.distributed.topology import Topology  # noqa: E402
from asyncvid.engine.runtime import StageRuntime  # noqa: E402
from asyncvid.engine.schedule import AsyncOptions  # noqa: E402
from asyncvid.engine.split import SplitPlan, balanced_ranges  # noqa: E402


def main() -> None:
    ensure_process_group()
    topo = Topology.create(2)
    adapter = toy.ToyAdapter(toy.ToyModel())
    plan = SplitPlan([u.name for u in adapter.units()], balanced_ranges([1.0] * toy.UNITS, 2))
    runtime = StageRuntime(adapter, plan, topo, default_device(), AsyncOptions(warmup=1))
    if topo.is_driver:
        runtime.begin(toy.TIMESTEPS[:4])
        toy.toy_loop(lambda s, tag, call: runtime.drive(s, call, tag), 4, 1, False)
        runtime.end_call()  # and leave: what "parallelize, one call, exit" scripts do
    else:
        runtime.follow()
    print(f"rank {topo.rank} done", flush=True)


if __name__ == "__main__":
    main()
