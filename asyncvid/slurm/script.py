"""The sbatch script for a job file: what one ``asyncvid slurm submit`` asks of the cluster.

Array task I of K renders jobs I, I+K, I+2K, ... of the file on N devices (``--devices-per-task``).
When every job uses all N (stages x cfg = N), the task runs ``srun`` with N ranks spread over M
nodes, which form one torch.distributed group from the Slurm environment. When jobs need fewer
devices, the task is one process on one node holding all N devices, and ``asyncvid render
--devices N`` runs N // (stages x cfg) replicas there side by side, each on its own devices. The
script is a pure function of the options (no dates, no job ids), so ``--dry-run`` prints exactly
what a submission writes and submits.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import AsyncVidError
from .commands import Node

SLURM_DIR = "slurm"  # inside the output folder: the script, submissions.jsonl, logs/


@dataclass(frozen=True)
class SubmitSpec:
    file: Path  # the job file (absolute)
    out: Path  # the output folder (absolute)
    devices: int  # ranks per array task
    tasks: int  # array tasks
    nodes: int = 1  # nodes per array task
    gpus_per_device: int = 0  # 0: CPU ranks (gloo, one thread each)
    cpus_per_device: int = 1
    partition: str | None = None
    time: str | None = None
    requeue: bool = False
    extra_sbatch: tuple[str, ...] = ()
    max_concurrent: int | None = None  # array throttle (%J)
    mem: str | None = None  # memory per node (sbatch --mem)
    python: str = "python3"
    workdir: Path = Path(".")

    @property
    def script_path(self) -> Path:
        return self.out / SLURM_DIR / f"{self.file.stem}.sbatch"

    @property
    def log_dir(self) -> Path:
        return self.out / SLURM_DIR / "logs"


def check_spec(spec: SubmitSpec, stages: dict[str, int], nodes: list[Node] | None) -> None:
    """Everything that would make the array fail, found before submitting. ``stages`` maps each job
    of the file to the devices it needs (stages x cfg); ``nodes`` are the partition's nodes (None:
    not checked)."""
    if spec.devices < 1:
        raise AsyncVidError(f"--devices-per-task must be >= 1, got {spec.devices}")
    if spec.nodes < 1 or spec.devices % spec.nodes:
        raise AsyncVidError(f"--devices-per-task {spec.devices} does not split evenly over --nodes-per-task {spec.nodes}")
    if not stages:
        raise AsyncVidError(f"{spec.file}: no jobs to submit")
    if not 1 <= spec.tasks <= len(stages):
        raise AsyncVidError(f"--tasks must be between 1 and the file's {len(stages)} job(s), got {spec.tasks}")
    wrong = {name: n for name, n in stages.items() if n > spec.devices or (spec.nodes > 1 and n != spec.devices)}
    if wrong:
        name, n = next(iter(wrong.items()))
        why = ("replicas of smaller jobs need --nodes-per-task 1" if n < spec.devices
               else "one stage per device, times cfg")
        raise AsyncVidError(f"job {name!r} needs {n} device(s) (stages x cfg) but --devices-per-task is {spec.devices} "
                            f"({why}){f'; {len(wrong) - 1} more job(s) differ' if len(wrong) > 1 else ''}")
    if spec.gpus_per_device < 0 or spec.cpus_per_device < 1:
        raise AsyncVidError("--gpus-per-device must be >= 0 and --cpus-per-device >= 1")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise AsyncVidError(f"--max-concurrent must be >= 1, got {spec.max_concurrent}")
    if nodes is None:
        return
    where = f"partition {spec.partition!r}" if spec.partition else "the default partition"
    per_node = spec.devices // spec.nodes
    if spec.nodes > len(nodes):
        raise AsyncVidError(f"--nodes-per-task {spec.nodes} but {where} has {len(nodes)} node(s)")
    fits = sorted(nodes, key=lambda n: (n.gpus, n.cpus), reverse=True)[spec.nodes - 1]  # M-th best node
    need_cpus = per_node * spec.cpus_per_device
    if need_cpus > fits.cpus:
        raise AsyncVidError(f"{per_node} device(s) per node x {spec.cpus_per_device} CPU(s) = {need_cpus} CPUs, but "
                            f"the nodes of {where} have at most {fits.cpus} (lower --devices-per-task or raise "
                            f"--nodes-per-task)")
    need_gpus = per_node * spec.gpus_per_device
    if need_gpus > fits.gpus:
        raise AsyncVidError(f"{per_node} device(s) per node x {spec.gpus_per_device} GPU(s) = {need_gpus} GPUs, but "
                            f"the nodes of {where} have at most {fits.gpus}")


def sbatch_script(spec: SubmitSpec, replicas: bool = False) -> str:
    """The script; ``replicas``: some jobs need fewer than N devices, so each array task is one
    process holding the N devices of one node, rendering with ``--devices N``."""
    q = shlex.quote
    per_node = spec.devices // spec.nodes
    ranks, cpus, gpus = (1, spec.devices * spec.cpus_per_device, spec.devices * spec.gpus_per_device) if replicas \
        else (per_node, spec.cpus_per_device, spec.gpus_per_device)
    lines = [
        "#!/bin/bash",
        f"# asyncvid render {spec.file} -> {spec.out}",
        (f"# {spec.tasks} array task(s), each one process with {spec.devices} device(s) running replicas side by "
         "side; task I renders" if replicas else
         f"# {spec.tasks} array task(s), each one group of {spec.devices} rank(s) on {spec.nodes} node(s); task I renders"),
        f"# jobs I, I+{spec.tasks}, ... and skips videos whose manifest matches, so re-running a task only renders",
        "# what is missing. Status and the resubmit command: asyncvid slurm status " + q(str(spec.out)),
        f"#SBATCH --job-name=asyncvid-{spec.file.stem}",
        f"#SBATCH --array=0-{spec.tasks - 1}" + (f"%{spec.max_concurrent}" if spec.max_concurrent else ""),
        f"#SBATCH --nodes={spec.nodes}",
        f"#SBATCH --ntasks-per-node={ranks}",
        f"#SBATCH --cpus-per-task={cpus}",
    ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-task={gpus}")
    lines.append(f"#SBATCH --output={spec.log_dir}/%A_%a.out")
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    if spec.time:
        lines.append(f"#SBATCH --time={spec.time}")
    if spec.mem:
        lines.append(f"#SBATCH --mem={spec.mem}")
    if spec.requeue:
        lines.append("#SBATCH --requeue")
    lines += [f"#SBATCH {option}" for option in spec.extra_sbatch]
    lines += ["set -euo pipefail", f"cd {q(str(spec.workdir))}"]
    if gpus:
        gpu = f" --gpus-per-task={gpus}"
    else:
        gpu = ""
        # CPU ranks: gloo, and as many threads as CPUs per rank
        lines += ["export ASYNCVID_DEVICE=cpu", f"export OMP_NUM_THREADS={spec.cpus_per_device}"]
    devices = f" --devices {spec.devices}" if replicas else ""
    lines.append(
        f"srun --kill-on-bad-exit=1 --cpus-per-task={cpus}{gpu} "
        f"{q(spec.python)} -m asyncvid render {q(str(spec.file))} --out {q(str(spec.out))}{devices} "
        f'--shard "$SLURM_ARRAY_TASK_ID/{spec.tasks}"')
    return "\n".join(lines) + "\n"
