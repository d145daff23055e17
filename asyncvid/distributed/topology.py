"""Rank layout. Ranks form a (cfg, stage) grid: rank = cfg_index * stages + stage.

Today cfg_degree is 1; the grid exists so that a classifier-free-guidance parallel dimension (two
stage pipelines, one per CFG branch, 2 x N ranks) can be added without renumbering anything.
Each CFG replica gets its own stage group; rank 0 of the first replica is the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from ..errors import AsyncVidError


@dataclass
class Topology:
    stages: int
    cfg_degree: int
    rank: int
    world_size: int
    stage_group: object | None = None

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def cfg_index(self) -> int:
        return self.rank // self.stages

    def stage_rank(self, stage: int) -> int:
        """Global rank of ``stage`` in this rank's CFG replica."""
        return self.cfg_index * self.stages + stage

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls, stages: int, cfg_degree: int = 1) -> "Topology":
        if stages < 1:
            raise AsyncVidError(f"stages must be >= 1, got {stages}")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world != stages * cfg_degree:
            raise AsyncVidError(
                f"world size {world} does not match stages={stages} x cfg_degree={cfg_degree}; "
                f"launch exactly {stages * cfg_degree} processes"
            )
        topo = cls(stages, cfg_degree, rank, world)
        for c in range(cfg_degree):  # every rank must take part in creating every group
            ranks = list(range(c * stages, (c + 1) * stages))
            group = dist.new_group(ranks) if world > 1 else dist.group.WORLD
            if rank in ranks:
                topo.stage_group = group
        return topo
