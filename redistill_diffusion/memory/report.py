"""What a peak-memory measurement returns: one report per model (the teacher/student pair: ``summary.py``).

Both conventions (``exact`` and ``paper``) fill the same :class:`MemoryReport`, so printing,
JSON and plots do not care how the numbers were obtained. MB means bytes / 1024**2, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

MB = 1024**2


def to_mb(num_bytes: int | float) -> float:
    return num_bytes / MB


@dataclass(frozen=True)
class TensorRecord:
    """One activation storage: its first tensor's shape, its size, and where it was created."""

    shape: tuple[int, ...]
    dtype: str
    bytes: int
    op: str
    module: str

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.shape) or "scalar"
        return f"{to_mb(self.bytes):9.4f} MB  {shape:<20} {self.dtype:<9} {self.op} in {self.module}"


@dataclass
class LayerMemory:
    """Memory attributed to one layer of the timeline.

    ``bytes`` is the largest amount alive while the layer ran (exact) or the layer's estimate
    (paper convention). ``end_bytes`` is what stays alive after it (exact only). ``ops`` names the
    operators the layer ran (exact only).
    """

    name: str
    bytes: int
    end_bytes: int | None = None
    ops: list[str] = field(default_factory=list)


@dataclass
class MemoryReport:
    """Peak activation memory of one forward pass, with the per-layer timeline behind it."""

    convention: str
    model: str
    input_shape: tuple[int, ...]
    peak_bytes: int
    peak_layer: str
    layers: list[LayerMemory]
    peak_op: str | None = None
    alive_at_peak: list[TensorRecord] = field(default_factory=list)
    cuda_max_memory_allocated: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return to_mb(self.peak_bytes)

    def to_dict(self, include_layers: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``peak_bytes`` and ``peak_layer`` come first for scripts that read it."""
        data: dict[str, Any] = {
            "peak_bytes": int(self.peak_bytes),
            "peak_layer": self.peak_layer,
            "peak_mb": self.peak_mb,
            "peak_op": self.peak_op,
            "convention": self.convention,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "alive_at_peak": [
                {**asdict(record), "shape": list(record.shape)} for record in self.alive_at_peak
            ],
            "notes": list(self.notes),
        }
        if self.cuda_max_memory_allocated is not None:
            data["cuda_max_memory_allocated"] = int(self.cuda_max_memory_allocated)
        if include_layers:
            data["layers"] = [asdict(layer) for layer in self.layers]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], convention: str | None = None) -> MemoryReport:
        """Reads ``to_dict``'s output back (``layers`` and ``alive_at_peak`` may be absent)."""
        return cls(
            convention=data.get("convention") or convention or "exact",
            model=data.get("model", ""),
            input_shape=tuple(int(s) for s in data.get("input_shape", ())),
            peak_bytes=int(data["peak_bytes"]),
            peak_layer=data.get("peak_layer") or "",
            layers=[LayerMemory(**layer) for layer in data.get("layers", ())],
            peak_op=data.get("peak_op"),
            alive_at_peak=[
                TensorRecord(**{**record, "shape": tuple(record["shape"])})
                for record in data.get("alive_at_peak", ())
            ],
            cuda_max_memory_allocated=data.get("cuda_max_memory_allocated"),
            notes=list(data.get("notes", ())),
        )

    def format(self, max_layers: int | None = 40, max_alive: int = 12) -> str:
        """A readable per-layer table: the ``max_layers`` largest layers in forward order, then what was alive."""
        lines = [
            f"{self.model} ({self.convention} convention), input {'x'.join(map(str, self.input_shape))}: "
            f"peak {self.peak_mb:.4f} MB ({self.peak_bytes} bytes) in {self.peak_layer}"
            + (f" at {self.peak_op}" if self.peak_op else "")
        ]
        if self.cuda_max_memory_allocated is not None:
            lines.append(
                f"torch.cuda.max_memory_allocated above weights and inputs: {to_mb(self.cuda_max_memory_allocated):.4f} MB"
            )
        layers = self.layers
        if max_layers is not None and len(layers) > max_layers:
            keep = sorted(range(len(layers)), key=lambda i: layers[i].bytes, reverse=True)[:max_layers]
            layers = [layers[i] for i in sorted(keep)]
            lines.append(f"largest {max_layers} of {len(self.layers)} layers, in forward order:")
        has_end = any(layer.end_bytes is not None for layer in layers)
        lines.append(f"  {'layer':<48} {'MB':>10}" + (f" {'after (MB)':>11}" if has_end else ""))
        for layer in layers:
            marker = "  <- peak" if layer.name == self.peak_layer and layer.bytes == self.peak_bytes else ""
            row = f"  {layer.name:<48} {to_mb(layer.bytes):>10.4f}"
            if has_end:
                row += f" {to_mb(layer.end_bytes or 0):>11.4f}"
            lines.append(row + marker)
        if self.alive_at_peak:
            records = sorted(self.alive_at_peak, key=lambda r: r.bytes, reverse=True)
            lines.append(f"alive at the peak ({len(records)} tensors):")
            lines.extend(f"  {record.describe()}" for record in records[:max_alive])
            if len(records) > max_alive:
                rest = sum(r.bytes for r in records[max_alive:])
                lines.append(f"  ... {len(records) - max_alive} more, {to_mb(rest):.4f} MB")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)
