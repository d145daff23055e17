"""Point-to-point transfer: carried states between stages, step messages and conditioning trees.

A state (a list of tensors) is packed into one flat buffer per dtype, so a cut costs one message per
dtype. Tensors that are the same object (``conv_in``'s output is both the hidden state and the
first skip) travel once. The receiver needs the layout (shapes, dtypes, aliases) before the first
transfer of a call; it is sent once, as a control message, and then reused for every step.

Every byte sent is counted, split into ``activation`` (boundary tensors), ``control`` (step messages,
layouts, tree structures), ``conditioning`` and ``extras`` (tensors of conditioning trees and of
per-call extras) and ``guidance`` (guidance parts' latents and predictions between CFG groups).
Nothing here is collective: no rank ever waits for the whole group.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import p2p
from .watchdog import watched


@dataclass(frozen=True)
class Layout:
    """Shapes and dtypes of a packed tensor list; ``alias[i] = j`` means tensor i is tensor j."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    alias: tuple[int, ...]

    def groups(self) -> dict[torch.dtype, int]:
        """Elements per dtype buffer."""
        counts: dict[torch.dtype, int] = defaultdict(int)
        for i, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes)):
            if self.alias[i] == i:
                counts[dtype] += _numel(shape)
        return dict(counts)

    def nbytes(self) -> int:
        return sum(n * torch.empty((), dtype=d).element_size() for d, n in self.groups().items())


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def layout_of(tensors: list[torch.Tensor]) -> Layout:
    first: dict[int, int] = {}
    alias = []
    for i, t in enumerate(tensors):
        alias.append(first.setdefault(id(t), i))
    return Layout(tuple(tuple(t.shape) for t in tensors), tuple(t.dtype for t in tensors), tuple(alias))


def pack(tensors: list[torch.Tensor], layout: Layout) -> list[torch.Tensor]:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
    for i, t in enumerate(tensors):
        if layout.alias[i] == i:
            by_dtype[t.dtype].append(t.reshape(-1))
    return [torch.cat(by_dtype[d]) if len(by_dtype[d]) > 1 else by_dtype[d][0].contiguous() for d in layout.groups()]


def unpack(buffers: list[torch.Tensor], layout: Layout) -> list[torch.Tensor]:
    offsets = {d: 0 for d in layout.groups()}
    flat = dict(zip(layout.groups(), buffers))
    out: list[torch.Tensor] = []
    for i, (shape, dtype) in enumerate(zip(layout.shapes, layout.dtypes)):
        if layout.alias[i] != i:
            out.append(out[layout.alias[i]])
            continue
        n = _numel(shape)
        out.append(flat[dtype][offsets[dtype] : offsets[dtype] + n].view(shape))
        offsets[dtype] += n
    return out


@dataclass
class Traffic:
    """Bytes this rank sent, by kind."""

    activation: int = 0
    control: int = 0
    conditioning: int = 0  # step-invariant inputs (text embeddings ...), sent once per call
    extras: int = 0  # per-call inputs routed to the stages that consume them (ControlNet residuals)
    guidance: int = 0  # guidance parts' latents and predictions between CFG groups' drivers
    messages: int = 0
    threaded_sends: int = 0  # states posted from the sender thread (gloo), not the rank's own
    per_step: list[int] = field(default_factory=list)  # activation bytes sent in each executed step

    def snapshot(self) -> dict:
        return {"activation_bytes": self.activation, "control_bytes": self.control,
                "conditioning_bytes": self.conditioning, "extras_bytes": self.extras,
                "guidance_bytes": self.guidance, "messages": self.messages, "threaded_sends": self.threaded_sends,
                "activation_bytes_per_step": list(self.per_step)}


class _Posted:
    """A send handed to the :class:`_Sender` thread: done once packed and posted (``works`` set)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.works: list = []
        self.error: BaseException | None = None

    def wait(self, timeout=None) -> bool:
        """Like a ``Work``'s: ``timeout`` a ``timedelta`` (the watchdog's limit) or None."""
        if not self.ready.wait(None if timeout is None else timeout.total_seconds()):
            raise RuntimeError("timed out while the sender thread posted a state")
        if self.error is not None:
            raise self.error
        for work in self.works:
            work.wait() if timeout is None else work.wait(timeout=timeout)
        return True


class _Sender:
    """One thread per process that packs and posts large states. On gloo the posting thread itself
    copies the bytes into the socket (about 1 ms per 3 MB here): done on this thread, that copy
    overlaps the rank's compute instead of adding to it. Sends of different links carry different
    tags, so their order between threads does not matter; on one link the order is kept (FIFO)."""

    _instance: "_Sender | None" = None

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="asyncvid-sender", daemon=True).start()

    @classmethod
    def get(cls) -> "_Sender":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _run(self) -> None:
        while True:
            link, tensors, posted = self.jobs.get()
            try:
                posted.works = link._post(tensors)
            except BaseException as exc:  # noqa: BLE001 - raised again on the rank's own thread by wait()
                posted.error = exc
            posted.ready.set()


def _send_on_thread(device: torch.device) -> bool:
    """Post large sends from the sender thread? Only where posting a send copies on the caller
    (gloo, CPU tensors); NCCL only enqueues, so there the rank's thread posts them itself."""
    return device.type == "cpu" and dist.is_initialized() and dist.get_backend() == "gloo"


_CHANNELS = ("hop", "eps", "part", "part eps")


def link_tag(call_tag: int, channel: str) -> int:
    """The transport tag of a state link: one per (call tag, channel), never 0 (the control channel)."""
    return 1 + len(_CHANNELS) * call_tag + _CHANNELS.index(channel)


#: a state at least this large is posted by the sender thread (smaller ones cost less than the hand-over);
#: ``ASYNCVID_SEND_THREAD_MIN_BYTES`` overrides it (the tests send every state from the thread with 0)
THREAD_MIN_BYTES = int(os.environ.get("ASYNCVID_SEND_THREAD_MIN_BYTES", 256 * 1024))


class StateLink:
    """One direction of one edge (this rank -> peer, or peer -> this rank) for carried states.

    ``tag`` tells this link's transfers apart from any other between the same two ranks (both ends
    give the same tag); the layout itself travels on the untagged control channel."""

    def __init__(self, peer: int, device: torch.device, traffic: Traffic, kind: str = "activation", tag: int = 0,
                 group=None):
        self.peer, self.device, self.traffic, self.kind, self.tag, self.group = peer, device, traffic, kind, tag, group
        self.layout: Layout | None = None
        self._pending: list = []
        self._threaded = False

    def reset(self) -> None:
        self.wait()
        self.layout = None

    # --- sending -------------------------------------------------------------------------
    def isend(self, tensors: list[torch.Tensor]) -> None:
        """Send a state; the layout goes first the first time after a reset."""
        self.wait()  # the previous message on this link has left: its buffer can go
        if self.layout is None:
            self.layout = layout_of(tensors)
            self.traffic.control += p2p.send_object(self.layout, self.peer, self.device, "a state layout")
            self._threaded = self.tag != 0 and self.layout.nbytes() >= THREAD_MIN_BYTES and _send_on_thread(self.device)
        for dtype, n in self.layout.groups().items():
            setattr(self.traffic, self.kind, getattr(self.traffic, self.kind) + n * torch.empty((), dtype=dtype).element_size())
            self.traffic.messages += 1
        if self._threaded:
            posted = _Posted()
            _Sender.get().jobs.put((self, tensors, posted))
            self.traffic.threaded_sends += 1
            self._pending.append(posted)
        else:
            self._pending.extend(self._post(tensors))

    def _post(self, tensors: list[torch.Tensor]) -> list:
        buffers = pack(tensors, self.layout)
        self._keep = buffers  # buffers must outlive the send
        return [dist.isend(buf, dst=self.peer, tag=self.tag, group=self.group) for buf in buffers]

    # --- receiving -----------------------------------------------------------------------
    def irecv(self) -> "PendingState":
        if self.layout is None:
            self.layout = p2p.recv_object(self.peer, self.device, "a state layout")
        buffers = [torch.empty(n, dtype=d, device=self.device) for d, n in self.layout.groups().items()]
        works = [dist.irecv(buf, src=self.peer, tag=self.tag, group=self.group) for buf in buffers]
        return PendingState(self.layout, buffers, works, self.peer)

    def wait(self) -> None:
        for work in self._pending:
            watched(work, self.peer, "it to take a stage output")
        self._pending.clear()



@dataclass
class PendingState:
    layout: Layout
    buffers: list[torch.Tensor]
    works: list
    peer: int = -1

    def wait(self) -> list[torch.Tensor]:
        for work in self.works:
            watched(work, self.peer, "its stage output")
        return unpack(self.buffers, self.layout)


def send_message(message: torch.Tensor, dst: int, traffic: Traffic, keep: list) -> None:
    """Send a step message without waiting; ``keep`` holds the pending work until the caller drains it."""
    keep.append((dist.isend(message, dst=dst), message))
    traffic.control += message.numel() * message.element_size()
    traffic.messages += 1


def recv_message(src: int, size: int, device: torch.device) -> torch.Tensor:
    return p2p.recv(torch.empty(size, dtype=torch.int64, device=device), src, "a step message")


def send_tree(tree, dst: int, device: torch.device, traffic: Traffic | None = None, kind: str = "conditioning") -> None:
    """Send a nested structure of tensors and plain values to ``dst`` (point to point).

    Non-tensor leaves travel pickled with the structure; tensors travel as tensors, so on NCCL they
    stay on the GPU. Tensor bytes are counted as ``kind`` (``conditioning``, ``extras`` or ``control``).
    """
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(tree)
    meta = [("T", tuple(x.shape), x.dtype) if torch.is_tensor(x) else ("V", x) for x in leaves]
    sent = p2p.send_object((meta, spec), dst, device, "a conditioning tree")
    if traffic is not None:
        traffic.control += sent
    for x in leaves:
        if torch.is_tensor(x):
            tensor = x.to(device).contiguous()
            p2p.send(tensor, dst, "a conditioning tensor")
            if traffic is not None:
                setattr(traffic, kind, getattr(traffic, kind) + tensor.numel() * tensor.element_size())


def recv_tree(src: int, device: torch.device):
    from torch.utils._pytree import tree_unflatten

    meta, spec = p2p.recv_object(src, device, "a conditioning tree")
    out = []
    for item in meta:
        if item[0] == "V":
            out.append(item[1])
            continue
        tensor = torch.empty(item[1], dtype=item[2], device=device)
        out.append(p2p.recv(tensor, src, "a conditioning tensor"))
    return tree_unflatten(out, spec)

