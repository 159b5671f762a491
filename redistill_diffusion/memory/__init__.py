"""Peak activation memory of one forward pass: the exact count and the paper's convention.

``measure_peak_memory(model, input_shape, convention="exact"|"paper")`` returns a
:class:`MemoryReport` (``peak_bytes``, ``peak_layer``, the per-layer ``layers`` timeline and, for
the exact count, the tensors alive at the peak). ``compare(teacher, student, ...)`` gives the JSON
of ``redistill memory``; ``MemorySummary`` is that comparison in each convention, the one schema of
``memory_report.json``, results.json's ``peak_memory`` and the model cards. New model families get a paper convention with
``register_paper_convention(predicate, estimate)``. See docs/memory.md.
"""

from .api import CONVENTIONS, default_inputs, measure_peak_memory
from .conventions import (
    ShapeProbe,
    find_paper_convention,
    red_block_bytes,
    register_paper_convention,
    registered_paper_conventions,
    unet2d_paper_convention,
    unregister_paper_convention,
)
from .plot import plot_memory_per_layer
from .report import MB, LayerMemory, MemoryReport, TensorRecord, to_mb
from .summary import MemorySummary, PeakComparison, compare, measure_conventions
from .tracer import StorageLivenessMode, trace_forward

__all__ = [
    "CONVENTIONS",
    "MB",
    "LayerMemory",
    "MemoryReport",
    "MemorySummary",
    "PeakComparison",
    "ShapeProbe",
    "StorageLivenessMode",
    "TensorRecord",
    "compare",
    "default_inputs",
    "find_paper_convention",
    "measure_conventions",
    "measure_peak_memory",
    "plot_memory_per_layer",
    "red_block_bytes",
    "register_paper_convention",
    "registered_paper_conventions",
    "to_mb",
    "trace_forward",
    "unet2d_paper_convention",
    "unregister_paper_convention",
]
