"""The sbatch script and the checks made before submitting (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncvid.errors import AsyncVidError
from asyncvid.slurm.commands import Node, gpus_in_gres
from asyncvid.slurm.script import SubmitSpec, check_spec, sbatch_script


def spec(**kw) -> SubmitSpec:
    base = dict(file=Path("/data/jobs.yaml"), out=Path("/data/out"), devices=4, tasks=3, python="/venv/bin/python",
                workdir=Path("/data"))
    return SubmitSpec(**{**base, **kw})


def test_gres_strings():
    assert gpus_in_gres("gpu:8") == 8
    assert gpus_in_gres("gpu:a100:4(S:0-1),shard:8") == 4
    assert gpus_in_gres("gpu:h100:2,gpu:a10:1") == 3
    assert gpus_in_gres("(null)") == 0


def test_gpu_script_requests_gpus_and_shards_by_array_index():
    text = sbatch_script(spec(gpus_per_device=1, nodes=2, partition="gpu", time="2:00:00", requeue=True,
                              extra_sbatch=("--account=vid", "--qos=high")))
    lines = text.splitlines()
    for expected in ("#SBATCH --array=0-2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2",
                     "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00",
                     "#SBATCH --requeue", "#SBATCH --account=vid", "#SBATCH --qos=high",
                     "#SBATCH --output=/data/out/slurm/logs/%A_%a.out"):
        assert expected in lines
    assert "export ASYNCVID_DEVICE=cpu" not in lines
    assert lines[-1] == ('srun --kill-on-bad-exit=1 --cpus-per-task=1 --gpus-per-task=1 /venv/bin/python -m asyncvid '
                         'render /data/jobs.yaml --out /data/out --shard "$SLURM_ARRAY_TASK_ID/3"')
    # sbatch stops reading directives at the first command: every #SBATCH line comes before it
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < first_command


def test_cpu_script_runs_gloo_ranks_with_their_threads():
    lines = sbatch_script(spec(cpus_per_device=2)).splitlines()
    assert "export ASYNCVID_DEVICE=cpu" in lines and "export OMP_NUM_THREADS=2" in lines
    assert not any("gpus" in line for line in lines)
    assert sbatch_script(spec(cpus_per_device=2)) == sbatch_script(spec(cpus_per_device=2))  # no dates, no ids


@pytest.mark.parametrize("kw, nodes, message", [
    (dict(devices=3, nodes=2), None, "does not split evenly"),
    (dict(tasks=9), None, "between 1 and the file's 4"),
    (dict(), [Node("a", 2, 0)], "4 CPUs, but the nodes of the default partition have at most 2"),
    (dict(nodes=2), [Node("a", 64, 8)], "--nodes-per-task 2 but the default partition has 1 node(s)"),
    (dict(gpus_per_device=1, partition="gpu"), [Node("a", 64, 2), Node("b", 64, 2)],
     "4 device(s) per node x 1 GPU(s) = 4 GPUs, but the nodes of partition 'gpu' have at most 2"),
])
def test_checks_fail_with_one_line(kw, nodes, message):
    with pytest.raises(AsyncVidError) as err:
        check_spec(spec(**kw), {n: kw.get("devices", 4) for n in "abcd"}, nodes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_checks_pass_when_the_group_fits():
    two_nodes = [Node("a", 64, 4), Node("b", 64, 4)]
    check_spec(spec(gpus_per_device=1, nodes=1), {n: 4 for n in "abcd"}, two_nodes)
    check_spec(spec(gpus_per_device=2, nodes=2), {n: 4 for n in "abcd"}, two_nodes)  # 2 ranks x 2 GPUs per node
    check_spec(spec(tasks=2), {"a": 4, "b": 2}, two_nodes)  # b runs as replicas on one node
    with pytest.raises(AsyncVidError, match="job 'b' needs 2 device.*need --nodes-per-task 1"):
        check_spec(spec(tasks=2, nodes=2), {"a": 4, "b": 2}, two_nodes)
    with pytest.raises(AsyncVidError, match="job 'a' needs 8 device"):
        check_spec(spec(tasks=2), {"a": 8, "b": 4}, two_nodes)


def test_replica_script_is_one_process_holding_every_device():
    lines = sbatch_script(spec(gpus_per_device=1, cpus_per_device=2), replicas=True).splitlines()
    for expected in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --gpus-per-task=4"):
        assert expected in lines
    assert lines[-1] == ('srun --kill-on-bad-exit=1 --cpus-per-task=8 --gpus-per-task=4 /venv/bin/python -m asyncvid '
                         'render /data/jobs.yaml --out /data/out --devices 4 --shard "$SLURM_ARRAY_TASK_ID/3"')


def test_status_of_a_folder_without_submissions_is_one_line(tmp_path, capsys):
    from asyncvid.cli.main import main

    assert main(["slurm", "status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"asyncvid: error: {tmp_path}: no asyncvid Slurm submission here (no slurm/submissions.jsonl)"
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "submissions.jsonl").write_text("{not json\n")
    assert main(["slurm", "resubmit", str(tmp_path)]) == 2
    assert "submissions.jsonl:1: not a JSON line" in capsys.readouterr().err


def test_extra_sbatch_as_the_readme_writes_it(tmp_path, capsys):
    from asyncvid.cli.main import main

    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {name: a, prompt: x}\n")
    assert main(["slurm", "submit", str(tmp_path / "jobs.yaml"), "--devices-per-task", "1",
                 '--extra-sbatch=--account=video --qos=high', "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "#SBATCH --account=video" in lines and "#SBATCH --qos=high" in lines


def test_array_throttle_and_memory():
    lines = sbatch_script(spec(max_concurrent=2, mem="64G")).splitlines()
    assert "#SBATCH --array=0-2%2" in lines and "#SBATCH --mem=64G" in lines
    with pytest.raises(AsyncVidError, match="--max-concurrent must be >= 1"):
        check_spec(spec(max_concurrent=0), {n: 4 for n in "abcd"}, None)


@pytest.mark.parametrize("gres_gpus, expected", [(4, "#SBATCH --gpus-per-task=1"), (0, "export ASYNCVID_DEVICE=cpu")])
def test_gpus_per_device_follows_the_partition_when_not_given(tmp_path, capsys, monkeypatch, gres_gpus, expected):
    from asyncvid.cli.main import main
    from asyncvid.slurm import commands

    monkeypatch.setattr(commands, "partition_nodes", lambda partition: [Node("n1", 64, gres_gpus)])
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {name: a, prompt: x}\n")
    assert main(["slurm", "submit", str(tmp_path / "jobs.yaml"), "--devices-per-task", "2", "--array-size", "1",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert expected in lines and "#SBATCH --array=0-0" in lines


def test_sacct_lines_give_each_array_task_its_final_state():
    from asyncvid.slurm.commands import parse_sacct

    text = ("86_0|FAILED|3:0\n86_1|CANCELLED by 0|0:15\n86_2|COMPLETED|0:0\n86_[3-5]|PENDING|0:0\n"
            "90_1|TIMEOUT|0:0\n90_2|OUT_OF_MEMORY|0:125\n77_0|FAILED|1:0\nnot a line\n")
    assert parse_sacct(text, [86, 90]) == {  # a later submission (90) wins over an earlier one for index 1
        0: ("FAILED", "exit 3"), 1: ("TIMEOUT", ""), 2: ("OUT_OF_MEMORY", "signal 125")}


def test_status_puts_slurms_final_state_before_the_log_line(tmp_path):
    from types import SimpleNamespace

    from asyncvid.slurm.status import job_states

    logs = tmp_path / "slurm" / "logs"
    logs.mkdir(parents=True)
    (logs / "7_0.out").write_text("rendering a\nslurmstepd: error: *** JOB 7 CANCELLED DUE TO TIME LIMIT ***\n")
    tasks = [SimpleNamespace(name=n, output=str(tmp_path / f"{n}.mp4"), manifest=str(tmp_path / f"{n}.json"),
                             config_hash="x") for n in "abc"]
    states = job_states(tmp_path, tasks, 3, {}, [7], {0: ("TIMEOUT", ""), 1: ("OUT_OF_MEMORY", "signal 9")})
    assert [(s.state, s.detail) for s in states] == [
        ("failed", "Slurm: TIMEOUT; 7_0.out: slurmstepd: error: *** JOB 7 CANCELLED DUE TO TIME LIMIT ***"),
        ("failed", "Slurm: OUT_OF_MEMORY, signal 9"),  # no log: accounting alone says it
        ("not run", "")]
