"""A simulated second device, ``cpu:1``, so the device rule is tested in CI on machines without a GPU.

A tensor on ``cpu:1`` is a :class:`SimTensor`: a wrapper that reports ``device == cpu:1`` and keeps its data in a
plain CPU tensor (``.raw``). Every aten op on it runs on that CPU data and wraps the result again, so numbers are
exactly the CPU numbers; what the simulation adds are the rules a real accelerator (CUDA) enforces:

- an op may not mix ``cpu:1`` tensors with CPU tensors, except where CUDA allows it: 0-dim CPU tensors (taken as
  scalars), ``copy_`` (loading a CPU state dict), CPU index tensors into a ``cpu:1`` tensor (not ``cpu:1`` indices
  into a CPU tensor), and a 0-dim CPU value for ``index_put``;
- ``.numpy()`` (and so ``np.asarray``) refuses a ``cpu:1`` tensor: it must be moved with ``.cpu()`` first;
- a CPU ``torch.Generator`` cannot drive a ``cpu:1`` op (``randint(..., generator=g, device=...)``,
  ``multinomial``), as a CUDA op refuses a CPU generator;
- factory functions given ``device=cpu:1`` (``torch.zeros(..., device=x.device)``, ``torch.tensor(data,
  device=...)``, ``t.new_tensor``) create ``cpu:1`` tensors, and ``.to('cpu:1')`` / ``model.to('cpu:1')`` move
  there; anything created without a device lands on the real CPU.

So a library call that passes on ``cpu:1`` and equals the CPU result has no hidden ``.numpy()`` of a device tensor
and no CPU tensor made without ``device=`` and then mixed in: the mistakes behind the raw torch errors of issue 14.
What it cannot show: ops CUDA lacks for some dtypes; CUDA's own numerics (TF32 convolutions); code that tests
``t.device.type == "cpu"`` or ``t.is_cpu`` (true on ``cpu:1``); in-place ops that change a shape (``unsqueeze_``:
refused here with NotImplementedError). The real GPU run (``benchmarks/gpu_check.sh``) covers those.

Use inside :func:`simulated_device` (the ``device`` fixture does): it installs a dispatch mode for factory calls and
makes ``module.to`` replace parameters (``torch.__future__.set_overwrite_module_params_on_conversion``), because a
wrapper cannot be assigned into an existing CPU parameter's ``.data``.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SIM = torch.device("cpu", 1)
aten = torch.ops.aten

# Where CUDA accepts CPU tensors: copy_ (from / to the CPU) takes any; indexing a device tensor takes CPU index
# tensors (not the other way round); index_put takes CPU indices and a 0-dim CPU value.
_COPY = {aten.copy_}
_INDEX = {aten.index, aten.index_put_, aten.index_put, aten._index_put_impl_}


class SimTensor(torch.Tensor):
    """A tensor on the simulated device: metadata of ``raw`` (a CPU tensor), device ``cpu:1``."""

    @staticmethod
    def __new__(cls, raw: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls, raw.shape, strides=raw.stride(), storage_offset=raw.storage_offset(), dtype=raw.dtype,
            layout=raw.layout, device=SIM, requires_grad=raw.requires_grad)
        r.raw = raw
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"SimTensor({self.raw!r}, device='{SIM}')"

    def tolist(self):
        return self.raw.tolist()                                        # CUDA tensors have .tolist() too

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_sim(d) -> bool:
    return d is not None and torch.device(d) == SIM


def _mix_error(func, what="") -> RuntimeError:
    return RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {SIM} and "
                        f"cpu!{what} ({func}, simulated device)")


def _check_mix(func, args, kwargs, flat) -> None:
    """Raise where CUDA would: a CPU tensor (not 0-dim) meets a device tensor, except as CUDA allows."""
    cpu = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, SimTensor) and t.dim() > 0]
    if not cpu or func.overloadpacket in _COPY:
        return
    if func.overloadpacket in _INDEX:
        if not isinstance(args[0], SimTensor):
            raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor (cpu) "
                               f"({func}, simulated device)")
        values = args[2] if len(args) > 2 else kwargs.get("values")
        if isinstance(values, torch.Tensor) and not isinstance(values, SimTensor) and values.dim() > 0:
            raise _mix_error(func, " (index_put values)")
        return
    raise _mix_error(func)


def _run(func, args, kwargs):
    flat = tree_flatten((args, kwargs))[0]
    on_sim = any(isinstance(t, SimTensor) for t in flat)
    if on_sim:
        _check_mix(func, args, kwargs, flat)
    gen = kwargs.get("generator")
    if gen is not None and (on_sim or _is_sim(kwargs.get("device"))):
        raise RuntimeError(f"Expected a '{SIM}' device type for generator but found '{gen.device}' (simulated device)")
    to_sim = _is_sim(kwargs.get("device"))
    if to_sim:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    unwrap = lambda t: t.raw if isinstance(t, SimTensor) else t      # noqa: E731
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if func.overloadpacket is aten._to_copy and "device" in kwargs and not to_sim:
        return out                                                      # .cpu() / .to('cpu'): leaves the device
    if not (on_sim or to_sim):
        return out
    if func._schema.is_mutable and args and isinstance(args[0], SimTensor) and out is args[0].raw:
        if out.shape != args[0].shape:
            raise NotImplementedError(f"{func} changed a tensor's shape in place: the simulated device cannot "
                                      "resize its wrapper; use the out-of-place op")
        return args[0]                                                  # in place: the same wrapper back
    return tree_map(lambda t: SimTensor(t) if type(t) is torch.Tensor else t, out)


class _FactoryMode(TorchDispatchMode):
    """Sends factory calls with ``device=cpu:1`` (no tensor argument to dispatch on) to the simulation."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(isinstance(t, SimTensor) for t in tree_flatten((args, kwargs))[0]):
            return NotImplemented                                       # SimTensor.__torch_dispatch__ runs it
        if _is_sim(kwargs.get("device")):
            return _run(func, args, kwargs)
        return func(*args, **kwargs)


class _TensorFromDataMode(TorchFunctionMode):
    """``torch.tensor(data, device=cpu:1)``, ``as_tensor`` / ``asarray`` and ``t.new_tensor(data)``: build on the
    CPU, then move (torch builds these below the dispatch modes, and would hand back a plain CPU tensor for the
    CPU-typed cpu:1)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_sim(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": None}).to(SIM)
        if func is torch.Tensor.new_tensor and isinstance(args[0], SimTensor) and kwargs.get("device") in (None, SIM):
            return args[0].raw.new_tensor(*args[1:], **{**kwargs, "device": None}).to(SIM)
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_device():
    """Within this block ``cpu:1`` is a second device with CUDA's rules (see the module docstring)."""
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with _FactoryMode(), _TensorFromDataMode():
            yield SIM
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


def is_on(device, expected) -> bool:
    """``device`` is ``expected``: 'cuda' matches cuda:0; 'cpu' does not match the simulated cpu:1."""
    device, expected = torch.device(device), torch.device(expected)
    if expected.index is None:
        return device.type == expected.type and device.index in (None, 0)
    return device == expected
