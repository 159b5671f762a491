"""Settings a run accepts but that do not do what they say on this machine, data or checkpoint.

Each function returns the one warning line to log (or None): what will really happen and how to get
what was asked for. The `Trainer` logs them before the first step; refusals (settings that cannot
train at all) are `optimization.validate_training_args`' one-line errors instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What a checkpoint records of the data order (training_state.json), and the flag that sets each.
DATA_ORDER_SETTINGS = {
    "train_batch_size": "--train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "num_processes": "processes",
}


def native_bf16() -> bool:
    """True when bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX (without them a
    CPU emulates bf16, slower than fp32: the quickstart took 19.9 min instead of 7.8 on such a machine)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(mixed_precision: str) -> str:
    """``auto``: bf16 where this machine computes it natively (`native_bf16`), else no; any other value as is."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16() else "no"


def mixed_precision_warning(mixed_precision: str, device_type: str) -> str | None:
    """accelerate turns fp16 autocast off on a CPU without a word: the run is plain fp32 there."""
    if mixed_precision == "fp16" and device_type == "cpu":
        return (
            "--mixed_precision fp16 needs a GPU; on this CPU the run trains in fp32 (pass --mixed_precision "
            "bf16 for mixed precision on a CPU, or no)."
        )
    return None


def small_dataset_warning(num_images: int, batch_size: int, num_processes: int) -> str | None:
    """Fewer images than one batch: every step trains on the same few images, in a smaller batch."""
    wanted = batch_size * num_processes
    if num_images >= wanted:
        return None
    per_step = f"{num_images} image{'s' if num_images != 1 else ''}"
    return (
        f"The training data has {per_step}, fewer than one batch (--train_batch_size {batch_size} x "
        f"{num_processes} process{'es' if num_processes != 1 else ''}): every step trains on the same "
        f"{per_step}; add images or lower --train_batch_size."
    )


def resume_mismatch_warning(
    checkpoint: str, saved: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """Resuming with another batch size, accumulation or process count: the run goes on, but it sees
    the data in another order than the run that saved the checkpoint (older checkpoints that did not
    record a setting are not compared on it)."""
    changed = [
        f"{flag} {saved[key]} -> {current[key]}"
        for key, flag in DATA_ORDER_SETTINGS.items()
        if key in saved and key in current and saved[key] != current[key]
    ]
    if not changed:
        return None
    return (
        f"Resuming {checkpoint} with other settings than it was saved with ({', '.join(changed)}): training "
        "continues from its step, but the data order differs, so the run is not bit-identical to an "
        "uninterrupted one; resume with the saved values to keep that."
    )
