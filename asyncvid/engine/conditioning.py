"""Has the conditioning changed since the previous call? Decided by version and content, never by ``id()``.

CPython reuses the ``id`` of a freed object, so a pipeline that builds a new tensor each step can
hand over a different tensor under an old id. Here the previous call's leaves are *held*, so no
new object can be mistaken for them. A leaf counts as unchanged when it is the very object seen
before with the same ``_version`` (torch bumps it on every in-place write), or, when it is another
object, when it has the same shape, dtype, device and values. Only a real change costs a transfer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten


def _same_leaf(new: Any, old: Any, old_version: int | None) -> bool:
    if torch.is_tensor(new) or torch.is_tensor(old):
        if not (torch.is_tensor(new) and torch.is_tensor(old)):
            return False
        if new is old:
            return new._version == old_version
        return (new.shape == old.shape and new.dtype == old.dtype and new.device == old.device
                and bool(torch.equal(new, old)))
    try:
        return bool(new == old)
    except Exception:  # noqa: BLE001 - values that cannot be compared count as changed
        return False


class ConditioningVersion:
    """A counter that moves when :meth:`update` sees a tree that differs from the previous one."""

    def __init__(self) -> None:
        self.version = 0
        self._spec = None
        self._leaves: list = []
        self._versions: list[int | None] = []

    def update(self, tree: Any) -> bool:
        """Record ``tree``; return True (and bump :attr:`version`) when it differs from the last one."""
        leaves, spec = tree_flatten(tree)
        same = (self._spec is not None and spec == self._spec and len(leaves) == len(self._leaves)
                and all(_same_leaf(n, o, v) for n, o, v in zip(leaves, self._leaves, self._versions)))
        self._spec, self._leaves = spec, leaves
        self._versions = [x._version if torch.is_tensor(x) else None for x in leaves]
        if not same:
            self.version += 1
        return not same

    def reset(self) -> None:
        self.__init__()
