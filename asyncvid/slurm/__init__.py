"""Render job files as Slurm job arrays: each array task is one multi-rank ``srun`` group that renders
a shard of the jobs and skips finished videos (see ``asyncvid slurm --help``)."""
