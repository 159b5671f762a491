"""Which training timesteps a step draws: uniform, as DDPM trains, or biased towards a range of noise levels with
the ``--timestep_bias_*`` flags of diffusers' SDXL training example (same names, same meaning).

A bias spends more of a run on the noise levels where a student falls short of its teacher (the parity
benchmark's students overshoot in colour from steps at t >= 700) without touching any loss: every term of the
objective, task and distillation alike, sees the biased draw.
"""

from __future__ import annotations

import math
from typing import Any

import torch

TIMESTEP_BIAS_STRATEGIES = ("none", "earlier", "later", "range")


def timestep_weights(ddpm_args: Any, num_train_timesteps: int) -> torch.Tensor | None:
    """Sampling probabilities of the ``num_train_timesteps`` training timesteps, or None for the uniform draw.

    ``later`` / ``earlier`` multiply the weight of the last / first ``timestep_bias_portion`` of the timesteps by
    ``timestep_bias_multiplier``; ``range`` those in [``timestep_bias_begin``, ``timestep_bias_end``). Bad values
    raise one ValueError naming the flag, before any training step."""
    strategy = ddpm_args.timestep_bias_strategy
    if strategy not in TIMESTEP_BIAS_STRATEGIES:
        raise ValueError(
            f"--timestep_bias_strategy must be one of {', '.join(TIMESTEP_BIAS_STRATEGIES)}, got {strategy!r}."
        )
    if strategy == "none":
        return None
    multiplier = ddpm_args.timestep_bias_multiplier
    if not (isinstance(multiplier, (int, float)) and math.isfinite(multiplier) and multiplier >= 0):
        raise ValueError(
            f"--timestep_bias_multiplier must be a finite number >= 0 (2 doubles the biased timesteps' share), "
            f"got {multiplier!r}."
        )
    if strategy == "range":
        begin, end = ddpm_args.timestep_bias_begin, ddpm_args.timestep_bias_end
        if not 0 <= begin < end <= num_train_timesteps:
            raise ValueError(
                f"--timestep_bias_begin {begin} and --timestep_bias_end {end} must satisfy 0 <= begin < end <= "
                f"{num_train_timesteps} (the scheduler's training timesteps)."
            )
        biased = slice(begin, end)
    else:
        portion = ddpm_args.timestep_bias_portion
        count = int(portion * num_train_timesteps) if isinstance(portion, (int, float)) else 0
        if not (0 < portion < 1) or count < 1:
            raise ValueError(
                f"--timestep_bias_portion must be in (0, 1) and cover at least one of the {num_train_timesteps} "
                f"timesteps, got {portion!r}."
            )
        biased = slice(num_train_timesteps - count, None) if strategy == "later" else slice(0, count)
    weights = torch.ones(num_train_timesteps, dtype=torch.float64)
    weights[biased] *= multiplier
    if weights.sum() <= 0:
        raise ValueError(
            "--timestep_bias_multiplier 0 over every timestep leaves nothing to train on: narrow the range."
        )
    return (weights / weights.sum()).float()  # normalised in float64, drawn from in float32


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, weights: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """``batch_size`` training timesteps on the generator's device: uniform (the same draw as DDPM's
    ``torch.randint``, so runs without a bias are unchanged) or from ``weights``."""
    if weights is None:
        return torch.randint(
            0, num_train_timesteps, (batch_size,), generator=generator, device=generator.device
        )
    return torch.multinomial(weights.to(generator.device), batch_size, replacement=True, generator=generator)
