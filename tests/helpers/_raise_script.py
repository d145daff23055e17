"""Under torchrun: the driver raises inside its stage mid-call (``_workers.fail_mid_call``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _workers  # noqa: E402

_workers.fail_mid_call(dict(stages=2, warmup=1, split="auto"), 0)
