"""The untouched pipeline on a simulated device: the baseline of ``asyncvid bench --simulate``.

A named, removable diffusers hook (``asyncvid.simulated_device``) replaces the denoiser's forward
by its units run in order in this process, each waiting its cost-table time instead of computing
(``engine/simulate.py``). The pipeline loop, scheduler and guidance stay real, so the only
difference from ``parallelize(..., simulate=table)`` is the engine itself.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook

from ..engine.simulate import CostTable, SimulatedDevice
from ..engine.units import run_units

HOOK_NAME = "asyncvid.simulated_device"


class SimulatedDenoiserHook(ModelHook):
    def __init__(self, adapter, device: SimulatedDevice):
        super().__init__()
        self.adapter, self.device = adapter, device
        self.units = device.units(adapter.units())

    def new_forward(self, module, *args, **kwargs):
        call = self.adapter.split_call(args, kwargs)
        self.device.batch = call.sample.shape[0]
        ctx = self.adapter.context(call.sample.shape, call.timestep, {**call.cond, **call.extras})
        state = run_units(self.units, ctx, self.adapter.input_state(call.sample))
        return self.adapter.wrap_output(self.adapter.prediction(state), call.return_dict)


def simulate_denoiser(adapter, table: CostTable) -> SimulatedDevice:
    """Put ``adapter``'s denoiser on a simulated device (until :func:`restore_denoiser`)."""
    device = SimulatedDevice(table)
    HookRegistry.check_if_exists_or_initialize(adapter.model).register_hook(SimulatedDenoiserHook(adapter, device),
                                                                            HOOK_NAME)
    return device


def restore_denoiser(adapter) -> None:
    HookRegistry.check_if_exists_or_initialize(adapter.model).remove_hook(HOOK_NAME)
