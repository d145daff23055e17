"""Rank layout. Ranks form a (cfg, stage) grid: rank = cfg_index * stages + stage.

With classifier-free-guidance parallelism (``cfg_degree`` > 1) there are ``cfg_degree`` stage
groups side by side, each running the same N stages on its part of the guidance batch. Each group
has its own stage-0 rank (its *group driver*); rank 0, the first group's, is the driver of the
whole pipeline: it runs the pipeline's denoising loop and hands the other group drivers their parts.
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
    #: carried states travel on groups of their own, one per direction (forward: stage to stage and
    #: guidance parts out; back: predictions to the driver), each with its own connections, so a large
    #: state in flight never holds up a step message or a prediction (gloo serialises one pair)
    forward_group: object | None = None
    back_group: object | None = None

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

    @property
    def is_group_driver(self) -> bool:
        """Stage 0 of a CFG group other than the first: serves rank 0's guidance parts."""
        return self.stage == 0 and self.cfg_index > 0

    def group_drivers(self) -> list[int]:
        """Global ranks of the other CFG groups' stage 0 (rank 0's peers for guidance parts)."""
        return [c * self.stages for c in range(1, self.cfg_degree)]

    @classmethod
    def create(cls, stages: int, cfg_degree: int = 1) -> "Topology":
        if stages < 1:
            raise AsyncVidError(f"stages must be >= 1, got {stages}")
        if cfg_degree < 1:
            raise AsyncVidError(f"cfg must be >= 1, got {cfg_degree}")
        world, rank = dist.get_world_size(), dist.get_rank()
        if world != stages * cfg_degree:
            raise AsyncVidError(
                f"world size {world} does not match stages={stages} x cfg={cfg_degree}; "
                f"launch exactly {stages * cfg_degree} processes"
            )
        topo = cls(stages, cfg_degree, rank, world)
        for c in range(cfg_degree):  # every rank must take part in creating every group
            ranks = list(range(c * stages, (c + 1) * stages))
            group = dist.new_group(ranks) if world > 1 else dist.group.WORLD
            if rank in ranks:
                topo.stage_group = group
        if world > 1:
            topo.forward_group = dist.new_group(list(range(world)))
            topo.back_group = dist.new_group(list(range(world)))
        return topo
