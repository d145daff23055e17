"""Options shared by ``bench``, ``plan`` and ``eval``: the device to run on, the precision, the forecast."""

from __future__ import annotations

import argparse
import os

DTYPES = ["float32", "float16", "bfloat16"]


def add_device_and_dtype(parser, dtype_help: str = "precision of every pipeline") -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where each rank runs: auto = cuda:LOCAL_RANK when a GPU is visible, else the CPU")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help=f"{dtype_help} (default: %(default)s; half precision is slow on CPUs)")


def apply_device(args) -> None:
    """Make ``--device`` every rank's choice (ranks are spawned later and read the environment)."""
    if getattr(args, "device", "auto") != "auto":
        os.environ["ASYNCVID_DEVICE"] = args.device
    from ..distributed.env import default_device

    default_device()  # a missing GPU is one line now, not in every rank later


def add_forecast(parser, what: str) -> None:
    parser.add_argument("--forecast", nargs="+", metavar="NAME", default=["none"], type=forecast_name,
                        help=f"stale-input forecasts (none, linear, quadratic, damped[:GAIN]; docs/forecast.md): {what} "
                             "(default: none)")


def forecast_name(text: str) -> str:
    from ..engine.forecast import Forecast
    from ..errors import AsyncVidError

    try:
        return Forecast.parse(text).name
    except AsyncVidError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
