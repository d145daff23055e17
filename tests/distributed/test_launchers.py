"""The same script under torchrun and without any launcher; Slurm variables map onto torch's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asyncvid.distributed.env import _first_slurm_host, env_from_slurm, launched_world_size
from asyncvid.utils import free_port

EXAMPLE = Path(__file__).parents[2] / "examples" / "parallel_animatediff.py"


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.multiprocess
def test_torchrun_two_ranks_matches_local_launcher(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    split_args = ["--stages", "2", "--warmup", "1"]
    proc = _run(torchrun + [str(EXAMPLE), *split_args, "--out", "a.npy"], tmp_path)
    assert "stage 1:" in proc.stdout
    frames = np.load(tmp_path / "a.npy")
    assert frames.shape == (8, 32, 32, 3)
    single = _run([sys.executable, str(EXAMPLE), "--stages", "1", "--out", "b.npy"], tmp_path)
    assert "stage 0:" in single.stdout
    # asynchronous (2 stages) and sequential (1 stage) differ, both are real renders
    assert np.abs(frames - np.load(tmp_path / "b.npy")).max() > 1e-3


def test_slurm_environment_maps_to_torch_variables():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
           "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[07-08],cpu1"}
    mapped = env_from_slurm(env)
    assert mapped == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                      "MASTER_PORT": str(20000 + 1234)}
    assert env_from_slurm({}) == {}
    # the sbatch script itself (no step) is one process, not rank 0 of a group
    batch_script = {k: v for k, v in env.items() if k != "SLURM_STEP_ID"}
    assert env_from_slurm(batch_script) == {}
    assert launched_world_size(env) == 4 and launched_world_size(batch_script) == 1
    assert _first_slurm_host("node1") == "node1"
    assert _first_slurm_host("a[1,3]") == "a1"


def test_a_lost_peer_is_one_plain_line():
    from asyncvid.distributed.env import lost_peer

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                        "peer [127.0.0.1]:22929. This is typically caused by a remote worker crashing. GLHF!")
    assert lost_peer(gloo) == "lost the connection to another rank at [127.0.0.1]:22929: it died or was killed"
    assert lost_peer(ValueError("height must be divisible by 8")) is None


def test_a_lost_peer_whose_process_is_gone_is_named(monkeypatch):
    import socket

    from asyncvid.distributed import env

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        host = socket.gethostname()
        monkeypatch.setattr(env, "_PEERS", [(host, os.getpid()), (host, alive.pid), (host, gone.pid), ("elsewhere", 1)])
        gloo = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:22929: Connection reset by peer. GLHF!")
        assert env.lost_peer(gloo) == (f"rank 2 (pid {gone.pid}) on this host died or was killed "
                                       "(its launcher's log names the signal)")
    finally:
        alive.kill()
