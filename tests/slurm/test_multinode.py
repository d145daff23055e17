"""One 2-rank render group across two "hosts": two network namespaces, each with its own address
on a veth pair and its own host name (a UTS namespace), started with the environment srun gives a
2-node step. Nothing may assume that the ranks share a host or a loopback interface.

Needs root and iproute2; skips with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from asyncvid.video import read_video_info

pytestmark = [pytest.mark.multiprocess, pytest.mark.root]

JOBS = """\
out: out
jobs:
  - name: across
    model: tiny-random
    prompt: "a red circle"
    frames: 8
    width: 64
    height: 64
    steps: 3
    stages: 2
    warmup: 1
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("network namespaces: iproute2/unshare not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces: needs root")
    tag = f"av{os.getpid() % 100000}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    hosts = [(f"{tag}a", f"{tag}x", f"{subnet}.1"), (f"{tag}b", f"{tag}y", f"{subnet}.2")]
    setup = [("netns", "add", hosts[0][0]), ("netns", "add", hosts[1][0]),
             ("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])]
    for ns, dev, addr in hosts:
        setup += [("link", "set", dev, "netns", ns), ("-n", ns, "addr", "add", f"{addr}/24", "dev", dev),
                  ("-n", ns, "link", "set", dev, "up"), ("-n", ns, "link", "set", "lo", "up")]
    try:
        for step in setup:
            proc = _ip(*step)
            if proc.returncode != 0:
                pytest.skip(f"network namespaces unavailable: ip {' '.join(step)}: {proc.stderr.strip()}")
        yield hosts
    finally:
        for ns, dev, _ in hosts:
            _ip("netns", "del", ns)  # deleting a namespace removes its end of the veth pair


def _counter(ns: str, dev: str, name: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/{name}"],
                              capture_output=True, text=True, check=True).stdout)


def test_render_group_spans_two_network_namespaces(tmp_path, two_hosts):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    nodelist = ",".join(addr for _, _, addr in two_hosts)  # srun's node list; the first host is the master
    before = _counter(two_hosts[1][0], two_hosts[1][1], "tx_bytes")
    procs = []
    for rank, (ns, _, _) in enumerate(two_hosts):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_STEP_ID="0",
                   SLURM_JOB_ID="4242", SLURM_NODELIST=nodelist, ASYNCVID_TIMEOUT="120", OMP_NUM_THREADS="1")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME"):
            env.pop(key, None)
        host = f"node-{'ab'[rank]}"  # does not resolve anywhere: nothing may need it to
        cmd = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"',
               sys.executable, "-m", "asyncvid", "render", str(jobs), "--quiet"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the two-host group did not finish in 240 s")
    assert [p.returncode for p in procs] == [0, 0], logs

    lines = [re.search(r"asyncvid: rank (\d)/2 local 0 host (\S+) pid \d+ master (\S+) backend gloo members 2", log)
             for log in logs]
    assert all(lines), logs
    assert [(m.group(1), m.group(2), m.group(3)) for m in lines] == [
        ("0", "node-a", f"{two_hosts[0][2]}:24242"), ("1", "node-b", f"{two_hosts[0][2]}:24242")]
    assert read_video_info(tmp_path / "out" / "across.mp4")["frames"] == 8
    # stage 1 lives in the other namespace: its activations really crossed the veth pair
    assert _counter(two_hosts[1][0], two_hosts[1][1], "tx_bytes") - before > 50_000
