"""asyncvid slurm against a real one-node Slurm cluster (slurmctld + slurmd + munge on 127.0.0.1).

The cluster is brought up by ``scripts/slurm-cluster.sh up`` (installing the Debian packages when
missing) and taken down afterwards if this session started it; where it cannot come up (no root,
no apt, ports taken) these tests skip with the script's reason. Array tasks are real ``sbatch``
jobs whose ``srun`` steps form 2-rank gloo groups and render tiny models.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from asyncvid.cli.main import main
from asyncvid.video import read_video_info

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
pytestmark = [pytest.mark.multiprocess, pytest.mark.slurm, pytest.mark.root]

JOBS = """\
out: out
defaults:
  model: tiny-random
  frames: 8
  width: 64
  height: 64
  steps: 3
  stages: 2
  warmup: 1
jobs:
  - {{name: a, prompt: "a red circle", seed: 1}}
  - {{name: b, prompt: "a blue square", seed: 2}}
  - {{name: c, prompt: "a green disc", seed: 3}}
  - {{name: d, prompt: "a white box", seed: 4, steps: {d_steps}}}
"""


@pytest.fixture(scope="module")
def slurm_conf():
    try:
        proc = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Slurm cluster: {exc}")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["slurm-cluster.sh up failed"])[-1]
        pytest.skip(f"no Slurm cluster: {reason}")
    conf = re.search(r"^SLURM_CONF=(.+)$", proc.stdout, re.M).group(1)
    yield conf
    if "already up" not in proc.stderr:  # leave a cluster we did not start alone
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, timeout=120)


@pytest.fixture
def cluster_env(slurm_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    return dict(os.environ)


def _jobfile(tmp_path: Path, d_steps: int = 3) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(d_steps=d_steps))
    return path


def _squeue(job_id: int) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", str(job_id)], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _wait_gone(job_id: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while _squeue(job_id):
        assert time.time() < deadline, f"job {job_id} still queued after {timeout} s: {_squeue(job_id)}"
        time.sleep(0.5)


def _submitted(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "slurm" / "submissions.jsonl").read_text().splitlines()]


def _group_lines(log: Path) -> list[dict]:
    pattern = (r"asyncvid: rank (\d+)/(\d+) local \d+ host (\S+) pid \d+ master (\S+) backend (\w+) members (\d+) "
               r"slurm job (\d+) array (\S+)")
    return [dict(zip(("rank", "world", "host", "master", "backend", "members", "job", "array"), m.groups()))
            for m in re.finditer(pattern, log.read_text())]


def test_the_quick_start_as_an_array_of_two_tasks_times_two_ranks(tmp_path, cluster_env, capsys):
    """The README's newcomer path: the quick start's jobs pin no `stages`, so two devices per task
    give each video two stages; each array task's two ranks form one group."""
    jobs = tmp_path / "quickstart.yaml"
    jobs.write_text((ROOT / "examples" / "quickstart.yaml").read_text().replace("\nout: out", "\nout: renders"))
    out = tmp_path / "renders"
    args = ["slurm", "submit", str(jobs), "--devices-per-task", "2", "--tasks", "2"]
    assert main(args + ["--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert main(args) == 0
    assert (out / "slurm" / "quickstart.sbatch").read_text() == dry  # --dry-run shows exactly what was submitted
    job_id = _submitted(out)[0]["job_id"]
    _wait_gone(job_id)

    for name, ext in (("red-circle", "mp4"), ("yellow-triangle", "gif")):
        assert read_video_info(out / f"{name}.{ext}")["frames"] == 8
        manifest = json.loads((out / f"{name}.json").read_text())
        assert manifest["devices"] == 2 and manifest["config"]["stages"] == 2
    # each array task's two ranks formed one group: both logged, same master, all-reduce saw 2 members
    for index in (0, 1):
        lines = _group_lines(out / "slurm" / "logs" / f"{job_id}_{index}.out")
        assert sorted(int(line["rank"]) for line in lines) == [0, 1]
        assert {(line["world"], line["members"], line["backend"], line["array"]) for line in lines} == {
            ("2", "2", "gloo", f"{job_id}_{index}")}
        assert len({line["master"] for line in lines}) == 1
    # array tasks are separate Slurm jobs with their own ports
    masters = {_group_lines(out / "slurm" / "logs" / f"{job_id}_{i}.out")[0]["master"] for i in (0, 1)}
    assert len(masters) == 2

    capsys.readouterr()
    assert main(["slurm", "status", str(out)]) == 0  # the status knows the stages the submission resolved
    status = capsys.readouterr().out
    assert "2 done (2 jobs)" in status and "resubmit" not in status


def test_one_array_task_holds_two_replicas_of_one_device_jobs(tmp_path, cluster_env, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS.format(d_steps=3).replace("stages: 2", "stages: 1"))
    out = tmp_path / "out"
    assert main(["slurm", "submit", str(jobs), "--devices-per-task", "2", "--tasks", "1", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --cpus-per-task=2" in script
    assert " --devices 2 " in script.splitlines()[-1]
    assert main(["slurm", "submit", str(jobs), "--devices-per-task", "2", "--tasks", "1"]) == 0
    job_id = _submitted(out)[0]["job_id"]
    _wait_gone(job_id)
    log = (out / "slurm" / "logs" / f"{job_id}_0.out").read_text()
    assert "4 job(s) of 1 device(s) each: 2 replica(s) side by side" in log
    assert "[replica 1/2] done" in log and "[replica 2/2] done" in log and "4 rendered" in log
    for name in "abcd":
        assert read_video_info(out / f"{name}.mp4")["frames"] == 8
        assert json.loads((out / f"{name}.json").read_text())["devices"] == 1


def test_cancelled_task_is_resubmitted_and_renders_only_what_is_missing(tmp_path, cluster_env, capsys):
    jobs = _jobfile(tmp_path, d_steps=30)  # d (task 1's second job) is slow enough to be cancelled mid-run
    out = tmp_path / "out"
    assert main(["slurm", "submit", str(jobs), "--devices-per-task", "2", "--tasks", "2"]) == 0
    job_id = _submitted(out)[0]["job_id"]
    deadline = time.time() + 300
    while not (out / "b.json").exists():  # task 1 finished b and is now rendering d
        assert time.time() < deadline, "task 1 never finished its first job"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["scancel", f"{job_id}_1"], check=True)
    _wait_gone(job_id)

    assert not (out / "d.json").exists() and not (out / "d.mp4").exists()
    assert not [p for p in out.rglob("*") if ".partial" in p.name]  # SIGTERM removed what it was writing
    b_manifest = (out / "b.json").read_text()
    capsys.readouterr()
    assert main(["slurm", "status", str(out)]) == 0
    status = capsys.readouterr().out
    # from sacct (the test cluster keeps accounting), then the log's own notice
    assert re.search(r"^d\s+task 1\s+failed\s+Slurm: CANCELLED[;,] .*CANCELLED", status, re.M), status
    assert f"resubmit: asyncvid slurm resubmit {out} --indices 1" in status

    _jobfile(tmp_path, d_steps=3)  # d need not be slow any more: the task renders what is missing, as it is now
    assert main(["slurm", "resubmit", str(out)]) == 0
    again = _submitted(out)[-1]
    assert again["indices"] == [1] and again["job_id"] != job_id
    _wait_gone(again["job_id"])

    log = (out / "slurm" / "logs" / f"{again['job_id']}_1.out").read_text()
    assert "skip b" in log and "1 rendered, 1 skipped, 0 failed" in log
    assert (out / "b.json").read_text() == b_manifest  # the finished video was not rendered again
    assert not (out / "slurm" / "logs" / f"{again['job_id']}_0.out").exists()  # task 0 was not resubmitted
    for name in "abcd":
        assert read_video_info(out / f"{name}.mp4")["frames"] == 8
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    capsys.readouterr()
    main(["slurm", "status", str(out)])
    assert "4 done (4 jobs)" in capsys.readouterr().out


def test_bad_arguments_fail_before_submission(tmp_path, cluster_env, capsys):
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    too_many = cpus + 1
    wide = tmp_path / "wide.yaml"
    wide.write_text(JOBS.format(d_steps=3).replace("stages: 2", f"stages: {too_many}"))
    jobs = _jobfile(tmp_path)
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout

    cases = [
        (wide, ["--devices-per-task", str(too_many)],
         f"= {too_many} CPUs, but the nodes of the default partition have at most {cpus}"),
        (jobs, ["--devices-per-task", "2", "--gpus-per-device", "1"], "= 2 GPUs, but the nodes of the default "
                                                                      "partition have at most 0"),
        (jobs, ["--devices-per-task", "1"], "job 'a' needs 2 device(s) (stages x cfg) but --devices-per-task is 1"),
        (jobs, ["--devices-per-task", "4", "--nodes-per-task", "2"], "replicas of smaller jobs need --nodes-per-task 1"),
        (jobs, ["--devices-per-task", "2", "--partition", "nosuch"], "nosuch"),
        (jobs, ["--devices-per-task", "2", "--tasks", "5"], "--tasks must be between 1 and the file's 4 job(s)"),
    ]
    for file, extra, expected in cases:
        capsys.readouterr()
        assert main(["slurm", "submit", str(file), *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    assert main(["slurm", "submit", str(tmp_path / "missing.yaml"), "--devices-per-task", "2"]) == 2
    assert "missing.yaml: job file not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "slurm").exists()  # nothing written, nothing submitted
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
