"""EMA of the main module: timm's `ModelEmaV3`, which averages parameters AND float buffers.

Buffers matter: EMA weights paired with the raw model's BatchNorm running statistics (RED blocks,
timm CNNs) normalise wrongly (washed-out samples). One object keeps both, on the model's device.

Two things are ours, each for a reason:
- the decay schedule is diffusers' (`EMAModel.get_decay`), which the recipes and benchmarks were run
  with: without warmup it ramps ``(1 + t) / (10 + t)`` up to ``--ema_max_decay``, where timm holds
  the maximum from the second step;
- the checkpoint files. timm has no save/load of its own (its EMA is an ``nn.Module``), and the
  layout below is the one checkpoints have always had, so checkpoints written before timm's EMA
  resume unchanged: ``ema/ema_shadow_params.safetensors`` (parameters by name) and
  ``ema/ema_buffers.safetensors`` (float buffers by name). The step count is not stored: the
  decay follows the trainer's ``global_step``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from safetensors.torch import load_file, save_file
from timm.utils.model_ema import ModelEmaV3
from torch import nn

EMA_DIR = "ema"
PARAMS_FILE = "ema_shadow_params.safetensors"
BUFFERS_FILE = "ema_buffers.safetensors"


class ModelEMA(ModelEmaV3):
    """``ModelEmaV3`` with diffusers' decay schedule and the checkpoint files above.

    Only the averaged tensors of ``self.module`` are used (swapped into the live model, saved); the
    copy itself is never run.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float,
        min_decay: float = 0.0,
        use_warmup: bool = True,
        inv_gamma: float = 1.0,
        power: float = 0.75,
    ):
        super().__init__(
            model,
            decay=decay,
            min_decay=min_decay,
            use_warmup=use_warmup,
            warmup_gamma=inv_gamma,
            warmup_power=power,
        )

    def get_decay(self, step: int | None = None) -> float:
        """diffusers' `EMAModel.get_decay` for ``step`` optimizer steps done (0 on the first: a copy)."""
        if step is None:
            return self.decay
        done = max(0, step - self.update_after_step - 1)
        if done <= 0:
            return 0.0
        if self.use_warmup:
            value = 1 - (1 + done / self.warmup_gamma) ** -self.warmup_power
        else:
            value = (1 + done) / (10 + done)
        return max(min(value, self.decay), self.min_decay)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the EMA weights and statistics inside the block, its own ones again after."""
        live = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.module.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(live)

    def _tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = dict(self.module.named_parameters())
        buffers = {name: b for name, b in self.module.named_buffers() if b.is_floating_point()}
        return params, buffers

    def save(self, checkpoint_dir: str) -> None:
        """Write ``<checkpoint_dir>/ema/`` (main process)."""
        folder = os.path.join(checkpoint_dir, EMA_DIR)
        os.makedirs(folder, exist_ok=True)
        params, buffers = self._tensors()
        save_file(
            {n: t.detach().contiguous().cpu() for n, t in params.items()}, os.path.join(folder, PARAMS_FILE)
        )
        if buffers:
            save_file(
                {n: t.detach().contiguous().cpu() for n, t in buffers.items()},
                os.path.join(folder, BUFFERS_FILE),
            )

    @torch.no_grad()
    def load(self, checkpoint_dir: str) -> None:
        """Read ``<checkpoint_dir>/ema/`` (every process). A missing name or shape raises (KeyError,
        RuntimeError): the trainer reports the checkpoint as not fitting this run."""
        folder = os.path.join(checkpoint_dir, EMA_DIR)
        params_file = os.path.join(folder, PARAMS_FILE)
        if not os.path.isfile(params_file):
            raise FileNotFoundError(
                f"Checkpoint {checkpoint_dir} has no EMA state; resume with --no_use_ema or from another checkpoint."
            )
        params, buffers = self._tensors()
        device = str(next(iter(params.values())).device)
        saved = load_file(params_file, device=device)
        for name, tensor in params.items():
            tensor.copy_(saved[name])
        buffers_file = os.path.join(folder, BUFFERS_FILE)
        if buffers and os.path.isfile(buffers_file):  # absent: the statistics stay those of the start
            saved = load_file(buffers_file, device=device)
            for name, tensor in buffers.items():
                tensor.copy_(saved[name])
