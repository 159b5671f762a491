"""Residual Encoded Distillation (RED): the block that replaces a student feature, and its loss.

Shared by the diffusion and classification sides (the paper's RED block; docs/architecture.md):

    gate     g = sigmoid(BN(conv1x1(x)))
    residual r = relu6(BN(convKxK(x)))
    y = x * g + r

The loss compares channel-mean maps, so student and teacher may have different widths.

``norm="group"`` swaps both BatchNorms for GroupNorm: a denoiser's batch mixes every noise level, and
eval-mode BatchNorm statistics (an average over all timesteps) normalise each timestep's features
differently from training; GroupNorm normalises each sample on its own (see docs/red_norm.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .taps import normalize_tap, parse_tap, probe_shapes, tap_to_key

RED_VARIANTS = ("full", "no_gate", "no_residual", "no_shortcut")
RED_DISTANCES = ("cosine", "mse")
RED_INITS = ("paper", "identity")
RED_NORMS = ("batch", "group")
RED_BLOCKS_ATTRIBUTE = (
    "red_blocks"  # where a student keeps its RED blocks (an nn.ModuleDict keyed by tap_to_key)
)
RED_GROUPS = 8  # GroupNorm groups (fewer when the channel count is not a multiple of 8)


def red_norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation inside both RED branches: the paper's BatchNorm or per-sample GroupNorm."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(RED_GROUPS, channels), channels)
    raise ValueError(f"Unknown RED norm {norm!r}; choose one of {', '.join(RED_NORMS)}.")


class REDBlock(nn.Module):
    """Gate + residual encoder placed on a student feature map (B x C x H x W).

    Variants (the paper's ablations): ``full`` (y = x*g + r), ``no_gate`` (y = x + r),
    ``no_residual`` (y = x*g), ``no_shortcut`` (y = r(g(x)), the encoder applied to the gated map).
    ``norm``: ``batch`` (the paper) or ``group`` (per-sample statistics, for denoisers).
    """

    def __init__(self, channels: int, kernel_size: int = 3, variant: str = "full", norm: str = "batch"):
        super().__init__()
        if variant not in RED_VARIANTS:
            raise ValueError(f"Unknown RED variant {variant!r}; choose one of {', '.join(RED_VARIANTS)}.")
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"RED kernel_size must be an odd positive integer, got {kernel_size}.")
        if channels < 1:
            raise ValueError(f"RED block needs a positive channel count, got {channels}.")
        if norm not in RED_NORMS:
            raise ValueError(f"Unknown RED norm {norm!r}; choose one of {', '.join(RED_NORMS)}.")
        self.channels = channels
        self.variant = variant
        self.norm = norm
        if variant != "no_gate":
            self.gate = nn.Sequential(
                nn.Conv2d(channels, channels, 1), red_norm_layer(norm, channels), nn.Sigmoid()
            )
        if variant != "no_residual":
            self.residual = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2),
                red_norm_layer(norm, channels),
                nn.ReLU6(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "full":
            return x * self.gate(x) + self.residual(x)
        if self.variant == "no_gate":
            return x + self.residual(x)
        if self.variant == "no_residual":
            return x * self.gate(x)
        return self.residual(x * self.gate(x))  # no_shortcut

    # Hooks are bound methods so that copy.deepcopy(model) rebinds them to the copied block.
    def _replace_output(self, module: nn.Module, args, output):
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)

    def _replace_input(self, module: nn.Module, args, kwargs):
        if args:
            return (self(args[0]), *args[1:]), kwargs
        name, value = next(iter(kwargs.items()))
        return args, {**kwargs, name: self(value)}


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


def attach_red_blocks(
    model: nn.Module,
    specs: Iterable[Mapping],
    kernel_size: int = 3,
    variant: str = "full",
    norm: str = "batch",
) -> nn.ModuleDict:
    """Create one REDBlock per spec ``{"tap": "module:where", "channels": C}`` and hook it in.

    The block replaces the tapped feature in every forward pass. Returns the ModuleDict, which the
    caller stores on the model (``model.red_blocks``) so the blocks are saved with its weights.
    """
    modules = dict(model.named_modules())
    blocks = nn.ModuleDict()
    for spec in specs:
        tap = spec["tap"]
        name, where = parse_tap(tap)
        if name not in modules:
            raise ValueError(f"RED block placement {tap!r}: the model has no module named {name!r}.")
        key = tap_to_key(tap)
        if key in blocks:
            raise ValueError(f"RED block placement {tap!r} is listed twice.")
        block = REDBlock(int(spec["channels"]), kernel_size=kernel_size, variant=variant, norm=norm)
        if where == "output":
            modules[name].register_forward_hook(block._replace_output)
        else:
            modules[name].register_forward_pre_hook(block._replace_input, with_kwargs=True)
        blocks[key] = block
    return blocks


def install_red_blocks(
    model: nn.Module,
    specs: Iterable[Mapping],
    kernel_size: int = 3,
    variant: str = "full",
    norm: str = "batch",
) -> list[dict]:
    """Hook RED blocks into ``model`` once and store them as ``model.red_blocks``.

    The one place both students (the UNet and the timm classifier) get their blocks. Returns the
    placement as it must be recorded in the model's saved config (``[{"tap", "channels"}]`` with
    normalised taps); each model records it under its own, unchanged, config keys (the UNet's
    ``red_placement``, the classifier spec's ``red_blocks``). Raises if the model already carries blocks.
    """
    existing = getattr(model, RED_BLOCKS_ATTRIBUTE, None)
    if existing is not None and len(existing):
        raise ValueError(
            "This model already carries RED blocks; build a new student to place them differently."
        )
    placement = [{"tap": normalize_tap(s["tap"]), "channels": int(s["channels"])} for s in specs]
    setattr(
        model,
        RED_BLOCKS_ATTRIBUTE,
        attach_red_blocks(model, placement, kernel_size=int(kernel_size), variant=variant, norm=norm),
    )
    return placement


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
