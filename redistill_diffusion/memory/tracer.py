"""Exact peak activation memory of one real eager forward pass, tensor storage by tensor storage.

A ``TorchDispatchMode`` sees every aten op. Each op output whose storage is new is an activation:
it is counted from that op until its storage is freed (a weakref callback on the untyped storage,
the mechanism of torch's own ``torch.distributed._tools.mem_tracker.MemTracker``). Storages that
existed before the forward (parameters, buffers, inputs, or anything else first seen as an op
input) are never counted, so views of weights (``aten.t`` of a Linear weight) do not leak in.
Module hooks keep a stack of fully qualified module names, so every op, every storage and the
peak are attributed to the innermost module running.

What this does not see: scratch buffers inside one kernel (e.g. a conv's im2col workspace) and
allocator rounding. It counts what the program holds, which is what a planner must keep alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .report import LayerMemory, MemoryReport, TensorRecord

TOP_LEVEL = "<model>"


def _storages(value) -> list[torch.UntypedStorage]:
    tensors = [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]
    storages = []
    for tensor in tensors:
        try:
            storages.append(tensor.untyped_storage())
        except (RuntimeError, NotImplementedError):  # sparse / opaque layouts have no storage to track
            continue
    return storages


@dataclass
class OpEvent:
    """One aten op in forward order, with the activation bytes alive right after it ran."""

    op: str
    module: str
    live_bytes: int


class _ModuleStack:
    """Fully qualified name of the innermost module running, kept by forward (pre-)hooks."""

    def __init__(self, model: nn.Module):
        self.names = [TOP_LEVEL]
        self._handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            self._handles.append(module.register_forward_pre_hook(partial(self._enter, name)))
            self._handles.append(module.register_forward_hook(partial(self._exit, name), always_call=True))

    @property
    def current(self) -> str:
        return self.names[-1]

    def _enter(self, name: str, module, args) -> None:
        self.names.append(name)

    def _exit(self, name: str, module, args, output) -> None:
        if self.names[-1] == name:
            self.names.pop()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class StorageLivenessMode(TorchDispatchMode):
    """Counts every storage created by an op while it is alive; records the peak and what was alive there."""

    def __init__(self, stack: _ModuleStack, external: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._stack = stack
        self._external: dict[int, torch.UntypedStorage] = {}  # strong refs: ids stay unique while tracing
        self._live: dict[int, TensorRecord] = {}
        self._weakrefs: dict[int, weakref.ref] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_module = TOP_LEVEL
        self.peak_op: str | None = None
        self.alive_at_peak: list[TensorRecord] = []
        self.events: list[OpEvent] = []
        for storage in _storages(list(external)):
            self._external[id(storage)] = storage

    def _forget(self, key: int, _ref) -> None:
        record = self._live.pop(key, None)
        self._weakrefs.pop(key, None)
        if record is not None:
            self.live_bytes -= record.bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for storage in _storages((args, kwargs)):
            key = id(storage)
            if key not in self._live and key not in self._external:
                self._external[key] = storage  # created outside the traced ops: not an activation
        out = func(*args, **kwargs)
        op = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
        module = self._stack.current
        flat_out = [v for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)]
        for tensor in flat_out:
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key = id(storage)
            if key in self._live or key in self._external or storage.nbytes() == 0:
                continue
            record = TensorRecord(
                shape=tuple(tensor.shape),
                dtype=str(tensor.dtype).replace("torch.", ""),
                bytes=int(storage.nbytes()),
                op=f"aten.{op}",
                module=module,
            )
            self._live[key] = record
            self._weakrefs[key] = weakref.ref(storage, partial(self._forget, key))
            self.live_bytes += record.bytes
        self.events.append(OpEvent(op=f"aten.{op}", module=module, live_bytes=self.live_bytes))
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_module = module
            self.peak_op = f"aten.{op}"
            self.alive_at_peak = list(self._live.values())
        return out


def layers_from_events(events: list[OpEvent]) -> list[LayerMemory]:
    """Group consecutive ops of the same innermost module into one timeline entry (a leaf layer call)."""
    layers: list[LayerMemory] = []
    for event in events:
        if layers and layers[-1].name == event.module:
            layer = layers[-1]
            layer.bytes = max(layer.bytes, event.live_bytes)
            layer.end_bytes = event.live_bytes
            layer.ops.append(event.op)
        else:
            layers.append(LayerMemory(event.module, event.live_bytes, event.live_bytes, [event.op]))
    return layers


@contextmanager
def _cuda_peak(device: torch.device):
    """Yield a dict that receives torch.cuda.max_memory_allocated above what was allocated before."""
    result: dict[str, int] = {}
    if device.type != "cuda" or not torch.cuda.is_available():
        yield result
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    yield result
    torch.cuda.synchronize(device)
    result["max_above_baseline"] = torch.cuda.max_memory_allocated(device) - baseline


def trace_forward(model: nn.Module, args: tuple, kwargs: dict, input_shape: tuple[int, ...]) -> MemoryReport:
    """Run ``model(*args, **kwargs)`` once under no_grad and return its exact activation peak."""
    external = [*model.parameters(), *model.buffers(), *tree_flatten((args, kwargs))[0]]
    external = [t for t in external if isinstance(t, torch.Tensor)]
    device = external[0].device if external else torch.device("cpu")
    stack = _ModuleStack(model)
    try:
        with torch.no_grad():
            # The CUDA counter is read in a separate, untraced pass: the dispatch mode must not
            # change what the allocator sees.
            cuda_peak = None
            if device.type == "cuda" and torch.cuda.is_available():
                with _cuda_peak(device) as cuda:
                    model(*args, **kwargs)
                cuda_peak = cuda.get("max_above_baseline")
            mode = StorageLivenessMode(stack, external)
            with mode:
                output = model(*args, **kwargs)
            del output
    finally:
        stack.remove()
    notes = []
    if cuda_peak is not None:
        notes.append(
            "cuda_max_memory_allocated includes kernel workspaces and allocator rounding (512-byte blocks)."
        )
    return MemoryReport(
        convention="exact",
        model=type(model).__name__,
        input_shape=tuple(input_shape),
        peak_bytes=mode.peak_bytes,
        peak_layer=mode.peak_module,
        peak_op=mode.peak_op,
        layers=layers_from_events(mode.events),
        alive_at_peak=sorted(mode.alive_at_peak, key=lambda r: r.bytes, reverse=True),
        cuda_max_memory_allocated=cuda_peak,
        notes=notes,
    )
