"""``python -m asyncvid ...`` is the ``asyncvid`` command (batch scripts use it to pin the interpreter)."""

import sys

from .cli.main import main

sys.exit(main())
