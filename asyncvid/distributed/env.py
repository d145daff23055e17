"""Join (or create) the torch.distributed process group from whatever launched us.

torchrun and ``accelerate launch`` set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; srun sets
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NODELIST, which are mapped onto the same names. On CUDA
the backend is NCCL and each rank uses ``cuda:LOCAL_RANK``; on CPU it is gloo with one thread per rank.
"""

from __future__ import annotations

import atexit
import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import AsyncVidError
from ..utils import free_port


def _first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list such as ``gpu[03-05,07],cpu1``."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not head:
        return nodelist
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def env_from_slurm(environ=os.environ) -> dict[str, str]:
    """torch.distributed variables derived from an srun step's environment (empty if not under srun).

    Only a job *step* counts (``SLURM_STEP_ID`` set): an sbatch script itself also has SLURM_PROCID=0
    and SLURM_NTASKS, but it is one process, not rank 0 of a group.
    """
    if not all(k in environ for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID")):
        return {}
    job = int(environ.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": _first_slurm_host(environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_NODELIST", "127.0.0.1"))),
        "MASTER_PORT": str(20000 + job % 20000),
    }


def launched_world_size(environ=os.environ) -> int:
    """Ranks in the group a launcher (torchrun, accelerate, srun) started this process in; 1 if none."""
    if "WORLD_SIZE" in environ:
        return int(environ["WORLD_SIZE"])
    return int(env_from_slurm(environ).get("WORLD_SIZE", "1"))


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` (modulo the visible GPUs: Slurm's ``--gpus-per-task`` may show each task
    only its own), else the CPU. ``ASYNCVID_DEVICE=cpu`` forces the CPU; ``=cuda`` requires a GPU."""
    asked = os.environ.get("ASYNCVID_DEVICE", "")
    if torch.cuda.is_available() and asked != "cpu":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if asked == "cuda":
        from ..errors import AsyncVidError

        raise AsyncVidError("device cuda was asked for (--device / ASYNCVID_DEVICE) but no CUDA device is visible")
    return torch.device("cpu")


def gloo_interface(master_addr: str) -> str | None:
    """The network interface this host uses to reach ``master_addr`` (None for loopback or if unknown).

    gloo otherwise binds to the address the host name resolves to, which on many machines is
    127.0.0.1 (``/etc/hosts``): fine on one host, but then a rank on another host is told to
    connect to its own loopback and the group never forms.
    """
    import fcntl
    import ipaddress
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master_addr, 9))  # UDP: picks the route, sends nothing
            local = s.getsockname()[0]
        if ipaddress.ip_address(local).is_loopback:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                except OSError:
                    continue
                if socket.inet_ntoa(packed[20:24]) == local:
                    return name
    except (OSError, ValueError):
        return None
    return None


def ensure_process_group(timeout_s: float | None = None) -> None:
    """Initialise the default group from the launcher's environment if it is not yet initialised."""
    if dist.is_initialized():
        return
    import warnings

    # torch's object collectives warn about a deprecated pytree API on every call, on every rank
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    for key, value in env_from_slurm().items():
        os.environ.setdefault(key, value)
    if "WORLD_SIZE" not in os.environ:
        # a plain `python script.py`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise AsyncVidError(f"launcher environment incomplete: {key} is not set")
    device = default_device()
    backend = os.environ.get("ASYNCVID_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend == "gloo" and int(os.environ["WORLD_SIZE"]) > 1 and "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = gloo_interface(os.environ["MASTER_ADDR"])
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    if device.type == "cpu" and int(os.environ["WORLD_SIZE"]) > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # a CPU "device" is one process with one thread
    timeout = timedelta(seconds=timeout_s or float(os.environ.get("ASYNCVID_TIMEOUT", "600")))
    dist.init_process_group(backend=backend, timeout=timeout)
    # A gloo group torn down by interpreter shutdown (rather than explicitly) can abort the process
    # ("terminate called without an active exception"); destroy the group we created on exit.
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def note_peers() -> None:
    """Gather every rank's (host, pid) once (a collective), to name a rank that dies or stops later."""
    import socket

    if _PEERS or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    peers = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    _PEERS[:] = peers


def describe_group() -> str:
    """One line naming this rank and its group, for logs (and for checking that a group formed)."""
    import socket

    rank, world = dist.get_rank(), dist.get_world_size()
    members = torch.ones(1)
    dist.all_reduce(members)  # every member adds 1: equals the world size only if all joined
    _PEERS[:] = [None] * world
    dist.all_gather_object(_PEERS, (socket.gethostname(), os.getpid()))  # to name a rank that dies later
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID")
    where = (f" slurm job {os.environ.get('SLURM_JOB_ID')}" + (f" array {slurm}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
                                                                 if slurm else "")) if "SLURM_JOB_ID" in os.environ else ""
    return (f"rank {rank}/{world} local {os.environ.get('LOCAL_RANK', '0')} host {socket.gethostname()} pid {os.getpid()} "
            f"master {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} backend {dist.get_backend()} "
            f"members {int(members.item())}{where}")


_LOST = re.compile(r"(Connection (?:closed|reset) by peer|Read error|Broken pipe)[^\[]*(\[[^\]]+\]:\d+)?")


#: (host, pid) of every rank of the group, gathered by :func:`describe_group` (launched runs)
_PEERS: list = []


def _gone(pid: int) -> bool:
    """The process no longer runs (no such pid, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        return False


def dead_peers() -> list[str]:
    """Ranks of this host's part of the group whose process is gone (``rank 1 (pid 4242)``); ranks
    on other hosts cannot be checked from here."""
    import socket

    host = socket.gethostname()
    return [f"rank {rank} (pid {peer[1]})" for rank, peer in enumerate(_PEERS)
            if peer and peer[0] == host and peer[1] != os.getpid() and _gone(peer[1])]


def lost_peer(exc: BaseException) -> str | None:
    """When ``exc`` is the transport noticing that another rank went away (gloo's "Connection
    closed by peer ... GLHF!"), one plain line saying so, naming the ranks of this host whose
    process is gone; None for any other error."""
    match = _LOST.search(str(exc))
    if match is None:
        return None
    dead = dead_peers()
    if dead:
        return f"{', '.join(dead)} on this host died or was killed (its launcher's log names the signal)"
    where = f" at {match.group(2)}" if match.group(2) else ""
    return f"lost the connection to another rank{where}: it died or was killed"


def process_state(rank: int) -> str:
    """A few words on ``rank``'s process when it runs on this host: stopped, or gone; else ''."""
    import socket

    if rank >= len(_PEERS) or not _PEERS[rank] or _PEERS[rank][0] != socket.gethostname():
        return ""
    pid = _PEERS[rank][1]
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return f" (its process, pid {pid}, is gone)"
    if state in ("T", "t"):
        return f" (its process, pid {pid} on this host, is stopped: SIGSTOP/SIGTSTP or a debugger)"
    if state == "Z":
        return f" (its process, pid {pid}, is gone)"
    return ""
