"""``asyncvid bench``: measured speed and memory, JSON out.

* :mod:`.speed`: AsyncDiff configurations on real CPU ranks against the untouched pipeline;
* :mod:`.simulated`: the same on simulated devices (each unit's arithmetic replaced by a wait of its
  cost from a cost table), where the engine's own per-step cost is what is measured;
* :mod:`.memory`: parameters and peak memory per rank, stage-only loading against the full pipeline;
* :mod:`.render`: a job file rendered on one device against D devices.
"""
