"""Memory per layer, teacher vs student: the picture of the paper's Figure 7 (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .report import MemoryReport, to_mb


def plot_memory_per_layer(
    pairs: Sequence[tuple[MemoryReport, MemoryReport]],
    path: str | Path,
    title: str | None = None,
    labels: tuple[str, str] = ("teacher", "student"),
) -> Path:
    """Write one panel per (teacher, student) pair of reports (e.g. one per convention) to ``path``.

    x is the layer's position in the forward pass, y the memory attributed to it (MB); the peak of
    each curve is marked and drawn as a dashed line. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not pairs:
        raise ValueError("Nothing to plot: pass at least one (teacher, student) pair of reports.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(len(pairs), 1, figsize=(10, 3.6 * len(pairs)), squeeze=False)
    for axis, (teacher, student) in zip(axes[:, 0], pairs):
        for report, label, color in ((teacher, labels[0], "tab:blue"), (student, labels[1], "tab:orange")):
            values = [to_mb(layer.bytes) for layer in report.layers]
            positions = range(len(values))
            if report.convention == "paper":
                axis.bar(
                    positions, values, alpha=0.55, color=color, label=f"{label}: peak {report.peak_mb:.3f} MB"
                )
            else:
                axis.plot(
                    positions,
                    values,
                    color=color,
                    linewidth=1.2,
                    label=f"{label}: peak {report.peak_mb:.3f} MB",
                )
            axis.axhline(report.peak_mb, color=color, linestyle="--", linewidth=0.8)
            peak_index = max(range(len(values)), key=values.__getitem__) if values else 0
            if values:
                axis.annotate(
                    report.peak_layer,
                    (peak_index, values[peak_index]),
                    textcoords="offset points",
                    xytext=(-4, 4),
                    ha="right",
                    fontsize=7,
                    color=color,
                )
        ratio = teacher.peak_bytes / student.peak_bytes if student.peak_bytes else float("inf")
        axis.set_title(
            f"{teacher.convention} convention, input {'x'.join(map(str, teacher.input_shape))}: "
            f"{labels[0]}/{labels[1]} peak ratio {ratio:.2f}x",
            fontsize=10,
        )
        axis.set_xlabel(
            "layer (forward order)"
            + (" — op groups of the real execution" if teacher.convention == "exact" else "")
        )
        axis.set_ylabel("activation memory (MB)")
        axis.legend(loc="upper left", fontsize=8)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
