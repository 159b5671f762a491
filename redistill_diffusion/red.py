"""Residual Encoded Distillation (RED): the block that replaces a student feature, and its loss.

Shared by the diffusion and classification sides (the paper's RED block; docs/architecture.md):

    gate     g = sigmoid(BN(conv1x1(x)))
    residual r = relu6(BN(convKxK(x)))
    y = x * g + r

The loss compares channel-mean maps, so student and teacher may have different widths.

``norm="group"`` swaps both BatchNorms for GroupNorm: a denoiser's batch mixes every noise level, and
eval-mode BatchNorm statistics (an average over all timesteps) normalise each timestep's features
differently from training; GroupNorm normalises each sample on its own (see docs/red_norm.md).

The block and the hooks that place it (`REDBlock`, `attach_red_blocks`, `install_red_blocks`) are
defined in `diffusion.model`, the self-contained file every saved UNet student carries, and are
used from here by both tasks; this module adds the loss, the initialisations and the tap convention.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# The block itself is defined once, in the self-contained student file that saved UNet students carry.
from .diffusion.model import (
    RED_BLOCKS_ATTRIBUTE,
    RED_NORMS,
    RED_VARIANTS,
    REDBlock,
    attach_red_blocks,
    install_red_blocks,
    red_norm_layer,
)
from .taps import normalize_tap, probe_shapes, tap_to_key

RED_DISTANCES = ("cosine", "mse")
RED_INITS = ("paper", "identity")


def init_red_blocks(model: nn.Module, init: str = "paper") -> int:
    """(Re-)initialise every `REDBlock` inside ``model``; returns how many there are.

    ``paper``: PyTorch's default initialisation, as in the paper, where students train from scratch.
    ``identity``: each block starts as (almost) the identity (gate ~0.98, residual ~0), so RED blocks
    added to a student initialised from its teacher do not perturb the copied features before training
    has adapted them. Both branches keep a small non-zero scale so their gradients are not zero.
    """
    if init not in RED_INITS:
        raise ValueError(f"Unknown RED init {init!r}; choose one of {', '.join(RED_INITS)}.")
    blocks = [m for m in model.modules() if isinstance(m, REDBlock)]
    if init == "identity":
        with torch.no_grad():
            for block in blocks:
                if hasattr(block, "gate"):
                    norm = block.gate[1]
                    norm.weight.fill_(0.01)
                    norm.bias.fill_(4.0)  # sigmoid(4) = 0.982
                if hasattr(block, "residual"):
                    norm = block.residual[1]
                    norm.weight.fill_(0.01)
                    norm.bias.zero_()
    return len(blocks)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x H x W: the map RED compares, independent of channel count."""
    return x.float().mean(dim=1)


def red_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Distance between channel-mean maps of one student/teacher pair (unweighted, mean over batch)."""
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"RED pair has different spatial sizes: student {tuple(student.shape[-2:])} vs teacher "
            f"{tuple(teacher.shape[-2:])}; pair features of the same resolution."
        )
    m_s, m_t = channel_mean(student).flatten(1), channel_mean(teacher).flatten(1)
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(m_s, m_t, dim=1, eps=1e-8)).mean()
    if distance == "mse":
        return F.mse_loss(m_s, m_t)
    raise ValueError(f"Unknown RED distance {distance!r}; choose one of {', '.join(RED_DISTANCES)}.")


def red_block_specs_at(model: nn.Module, taps: Iterable[str], *args, **kwargs) -> list[dict]:
    """`install_red_blocks` specs for ``taps``: each tap with the channel count one probe forward
    ``model(*args, **kwargs)`` sees there (`taps.probe_shapes`)."""
    shapes = probe_shapes(model, taps, *args, **kwargs)
    return [{"tap": tap, "channels": int(shape[1])} for tap, shape in shapes.items()]


def red_feature_tap(tap: str) -> str:
    """The tap on a RED block's own output: the student feature of the RED loss.

    The one convention of both tasks. It names the block, not the module it sits on, so it does not
    depend on the order in which hooks were registered.
    """
    return f"{RED_BLOCKS_ATTRIBUTE}.{tap_to_key(tap)}:output"


def red_loss_pairs(model: nn.Module, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(student tap, teacher tap) pairs with every student tap that carries a RED block of ``model``
    replaced by that block's output tap (`red_feature_tap`); other pairs are kept as given."""
    blocks = getattr(model, RED_BLOCKS_ATTRIBUTE, None) or {}
    return [
        (red_feature_tap(s) if tap_to_key(s) in blocks else normalize_tap(s), normalize_tap(t))
        for s, t in pairs
    ]


__all__ = [
    "RED_BLOCKS_ATTRIBUTE",
    "RED_DISTANCES",
    "RED_INITS",
    "RED_NORMS",
    "RED_VARIANTS",
    "REDBlock",
    "attach_red_blocks",
    "channel_mean",
    "init_red_blocks",
    "install_red_blocks",
    "red_block_specs_at",
    "red_distance",
    "red_feature_tap",
    "red_loss_pairs",
    "red_norm_layer",
]
