"""``asyncvid slurm submit | status | resubmit``: a job file as a Slurm job array."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import AsyncVidError

DEFAULT_MAX_TASKS = 8


def add_slurm_parser(subparsers) -> None:
    p = subparsers.add_parser("slurm", help="render a job file as a Slurm job array",
                              description="Submit a job file as a Slurm job array (each array task = one srun "
                                          "group of N ranks rendering a shard of the jobs), follow it, and resubmit "
                                          "what failed. Finished videos are never rendered twice.")
    sub = p.add_subparsers(dest="slurm_command", required=True, metavar="SUBCOMMAND")

    s = sub.add_parser("submit", help="write the sbatch script beside the outputs and submit it")
    s.add_argument("file", help="job file (YAML)")
    s.add_argument("--devices-per-task", type=int, required=True, metavar="N",
                   help="devices per array task: jobs without `stages` get N / cfg stages; jobs needing fewer "
                        "(stages x cfg) run as replicas side by side")
    s.add_argument("--array-size", "--tasks", dest="tasks", type=int, metavar="K",
                   help=f"array tasks; task I renders jobs I, I+K, ... (default: jobs, at most {DEFAULT_MAX_TASKS})")
    s.add_argument("--max-concurrent", type=int, metavar="J", help="at most J array tasks running at once (%%J)")
    s.add_argument("--mem", metavar="SIZE", help="memory per node, e.g. 64G (sbatch --mem)")
    s.add_argument("--out", metavar="DIR", help="output folder (default: the file's `out`)")
    s.add_argument("--partition", metavar="P", help="Slurm partition (default: the cluster's default one)")
    s.add_argument("--time", metavar="T", help="time limit per array task, e.g. 2:00:00")
    s.add_argument("--gpus-per-device", type=int, metavar="G",
                   help="GPUs per rank (NCCL); 0 runs CPU ranks over gloo (default: 1 if the partition's nodes "
                        "have GPUs, per sinfo's GRES, else 0)")
    s.add_argument("--cpus-per-device", type=int, default=1, metavar="C", help="CPUs per rank (default 1)")
    s.add_argument("--nodes-per-task", type=int, default=1, metavar="M", help="nodes one group spans (default 1)")
    s.add_argument("--extra-sbatch", default="", metavar='"..."',
                   help='more sbatch options, each becoming an #SBATCH line; write it with "=" since the value '
                        'starts with dashes: --extra-sbatch="--account=vid --qos=high"')
    s.add_argument("--requeue", action="store_true", help="let Slurm requeue preempted or failed tasks")
    s.add_argument("--dry-run", action="store_true", help="print the script and exit without submitting")
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="done / running / pending / failed per job, and how to resubmit")
    st.add_argument("out", metavar="DIR", help="the output folder given to submit")
    st.set_defaults(func=cmd_status)

    r = sub.add_parser("resubmit", help="submit the kept script again for the array tasks with unfinished jobs")
    r.add_argument("out", metavar="DIR", help="the output folder given to submit")
    r.add_argument("--indices", metavar="I,J", help="these array task indices (default: every task with a failed "
                                                      "or never-run job)")
    r.set_defaults(func=cmd_resubmit)


def cmd_submit(args) -> int:
    from ..render.batch import check_folders
    from ..render.jobfile import load_job_file
    from ..render.tasks import tasks_for
    from ..slurm import commands
    from ..slurm.script import SubmitSpec, check_spec, sbatch_script
    from ..slurm.status import record_submission
    from ..utils import atomic_write

    jobfile = load_job_file(args.file)
    out = Path(args.out).expanduser().resolve() if args.out else jobfile.out
    try:
        extra = tuple(shlex.split(args.extra_sbatch))
    except ValueError as exc:
        raise AsyncVidError(f"--extra-sbatch: {exc}") from None
    try:
        nodes = commands.partition_nodes(args.partition)
    except AsyncVidError as exc:
        if not args.dry_run:
            raise
        nodes = None
        print(f"asyncvid: note: cluster limits not checked ({exc})", file=sys.stderr)
    gpus = args.gpus_per_device
    if gpus is None:  # the partition says: GPU nodes get one GPU per rank
        gpus = 1 if nodes and any(n.gpus for n in nodes) else 0
    spec = SubmitSpec(file=jobfile.path.resolve(), out=out, devices=args.devices_per_task,
                      tasks=args.tasks or min(len(jobfile.jobs), DEFAULT_MAX_TASKS), nodes=args.nodes_per_task,
                      gpus_per_device=gpus, cpus_per_device=args.cpus_per_device,
                      partition=args.partition, time=args.time, requeue=args.requeue, extra_sbatch=extra,
                      python=sys.executable, workdir=Path.cwd(), max_concurrent=args.max_concurrent, mem=args.mem)
    tasks = tasks_for(jobfile, out, devices=args.devices_per_task)
    needs = {t.name: t.config["stages"] * t.config.get("cfg", 1) for t in tasks}
    check_spec(spec, needs, None)
    check_folders(jobfile, jobfile.jobs, tasks)
    check_spec(spec, needs, nodes)
    script = sbatch_script(spec, replicas=any(n < spec.devices for n in needs.values()))
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(spec.script_path, script)
    job_id = commands.sbatch(str(spec.script_path))
    record_submission(out, job_id, spec.script_path, spec.file, spec.tasks, list(range(spec.tasks)), spec.devices)
    print(f"submitted array job {job_id}: {spec.tasks} task(s) x {spec.devices} rank(s) for {len(jobfile.jobs)} "
          f"job(s) -> {out}\nscript: {spec.script_path}\nfollow: asyncvid slurm status {shlex.quote(str(out))}")
    return 0


def _current(out: Path):
    """(latest submission record, its job file, render tasks, job ids of that script's submissions)."""
    from ..render.jobfile import load_job_file
    from ..render.tasks import tasks_for
    from ..slurm.status import load_records

    records = load_records(out)
    latest = records[-1]
    jobfile = load_job_file(latest["file"])
    same = [r["job_id"] for r in records if r["script"] == latest["script"] and r["tasks"] == latest["tasks"]]
    return latest, tasks_for(jobfile, out, devices=latest.get("devices", 1)), same


def _states(out: Path):
    from ..slurm import commands
    from ..slurm.status import job_states

    latest, tasks, job_ids = _current(out)
    queued = commands.array_states(job_ids)
    return latest, job_states(out, tasks, latest["tasks"], queued, job_ids, commands.final_states(job_ids))


def cmd_status(args) -> int:
    from ..slurm.status import to_resubmit

    out = Path(args.out).expanduser().resolve()
    latest, states = _states(out)
    width = max(len(s.name) for s in states)
    for s in states:
        print(f"{s.name:<{width}}  task {s.index:<3} {s.state:<8} {s.detail}".rstrip())
    counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "pending", "failed", "not run")}
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" ({len(states)} jobs)")
    missing = to_resubmit(states)
    if missing:
        print(f"resubmit: asyncvid slurm resubmit {shlex.quote(str(out))} --indices {','.join(map(str, missing))}")
    return 0


def cmd_resubmit(args) -> int:
    from ..slurm import commands
    from ..slurm.status import record_submission, to_resubmit

    out = Path(args.out).expanduser().resolve()
    latest, states = _states(out)
    if args.indices:
        try:
            indices = sorted({int(i) for i in args.indices.split(",")})
        except ValueError:
            raise AsyncVidError(f"--indices: expected comma-separated integers, got {args.indices!r}") from None
        bad = [i for i in indices if not 0 <= i < latest["tasks"]]
        if bad:
            raise AsyncVidError(f"--indices: {bad[0]} is not an array index of this submission (0-{latest['tasks'] - 1})")
    else:
        indices = to_resubmit(states)
    if not indices:
        print("nothing to resubmit: every job is done or still queued")
        return 0
    if not Path(latest["script"]).is_file():
        raise AsyncVidError(f"the kept script {latest['script']} is gone; submit the job file again")
    job_id = commands.sbatch(latest["script"], array=",".join(map(str, indices)))
    record_submission(out, job_id, Path(latest["script"]), Path(latest["file"]), latest["tasks"], indices,
                      latest.get("devices", 1))
    print(f"resubmitted array task(s) {','.join(map(str, indices))} as job {job_id}")
    return 0
