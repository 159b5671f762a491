"""ReDistill student UNet for diffusers: a `UNet2DModel` that downsamples hard at the stem.

This file is self-contained (it imports only torch, diffusers and the standard library) and is the one
definition of the student: redistill-diffusion imports `ReDistillUNet2DModel`, the RED block and the tap
names from here, and every student folder it saves carries this file, copied as it is, as the diffusers
community component ``unet/redistill_unet.py``. Where redistill-diffusion is not installed:

    pipeline = DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)

The student keeps every block and width of its teacher; only strides change (the paper's student;
docs/method.md): ``conv_in`` gets stride ``stem_stride``, the last log2(stem_stride) ``Downsample2D``
layers get stride 1, the matching ``Upsample2D`` layers skip their interpolation, and the output head
restores full resolution. The deepest feature map keeps the teacher's size, so every weight but the
output head has the teacher's shape. RED blocks (``red_placement`` config, modules in ``red_blocks``)
are hooked in at construction, so they are part of the saved model and of every forward pass.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

# A folder saved by `pipeline.save_pretrained` names this module in model_index.json; diffusers then
# needs `ModelMixin` here to recognise the class as a loadable model.
from diffusers import (
    ModelMixin,  # noqa: F401
    UNet2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

# ---------------------------------------------------------------------------------------------- taps
# A tap names a feature: "<module name>:<input|output>" (":output" when the suffix is omitted).


def parse_tap(tap: str) -> tuple[str, str]:
    """'module:where' -> (module, where); where defaults to 'output'."""
    module, _, where = tap.rpartition(":") if ":" in tap else (tap, ":", "output")
    if where not in ("input", "output"):
        raise ValueError(f"Tap {tap!r} must end in ':input' or ':output'.")
    return module, where


def tap_to_key(tap: str) -> str:
    """A tap as a valid nn.ModuleDict key ('.' and ':' are not allowed there)."""
    module, where = parse_tap(tap)
    return f"{module.replace('.', '_')}__{where}"


def normalize_tap(tap: str) -> str:
    module, where = parse_tap(tap)
    return f"{module}:{where}"


# ----------------------------------------------------------------------------------------- RED block
# Residual Encoded Distillation: gate g = sigmoid(N(conv1x1(x))), residual r = relu6(N(convKxK(x))),
# y = x * g + r, where N is BatchNorm (the paper's) or per-sample GroupNorm (docs/red_norm.md).

RED_VARIANTS = ("full", "no_gate", "no_residual", "no_shortcut")
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

    The one place every student (this UNet and the timm classifiers) gets its blocks. Returns the
    placement as it must be recorded in the model's saved config (``[{"tap", "channels"}]`` with
    normalised taps). Raises if the model already carries blocks.
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


# ------------------------------------------------------------------------------------ student config

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
OUTPUT_HEADS = ("transposed_conv", "overlapping_transposed_conv", "pixel_shuffle")
STEMS = ("conv", "space_to_depth")
RED_PRESETS = ("paper", "full")
HEAD_INITS = ("paper", "random", "teacher")
# The student's config is UNet2DModel's plus its own keys; these are the ones passed on to UNet2DModel.
UNET2D_ARGUMENTS = tuple(inspect.signature(UNet2DModel.__init__).parameters)[1:]


def spatial_size(sample_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if sample_size is None:
        return None
    if isinstance(sample_size, int):
        return (sample_size, sample_size)
    return (int(sample_size[0]), int(sample_size[1]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True would build a stride-1 student


def validate_student_config(
    *,
    stem_stride: int,
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    sample_size: int | Sequence[int] | None,
    output_head: str,
    downsample_type: str = "conv",
    upsample_type: str = "conv",
    red_variant: str = "full",
    red_norm: str = "batch",
    stem: str = "conv",
    refiner_channels: int = 0,
) -> None:
    """Raise one clear ValueError for a student that cannot be built (before any weights exist)."""
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; choose one of {', '.join(STEMS)}.")
    if not _is_int(stem_stride) or stem_stride < 1 or stem_stride & (stem_stride - 1):
        raise ValueError(f"stem_stride must be a power of two (1, 2, 4, 8, ...), got {stem_stride!r}.")
    for kind, types, supported in (
        ("down", down_block_types, SUPPORTED_DOWN_BLOCKS),
        ("up", up_block_types, SUPPORTED_UP_BLOCKS),
    ):
        unknown = [t for t in types if t not in supported]
        if unknown:
            raise ValueError(
                f"Unsupported {kind} block type(s) {unknown}; ReDistillUNet2DModel supports {', '.join(supported)}."
            )
    if stem_stride > 1 and (downsample_type != "conv" or upsample_type != "conv"):
        raise ValueError(
            f"ReDistillUNet2DModel needs downsample_type='conv' and upsample_type='conv' to move strides, got "
            f"{downsample_type!r}/{upsample_type!r}."
        )
    num_downsamplers = len(down_block_types) - 1
    shifts = int(math.log2(stem_stride))
    if shifts > num_downsamplers:
        raise ValueError(
            f"stem_stride={stem_stride} needs {shifts} downsamplers to give back, but this UNet has only "
            f"{num_downsamplers}; use stem_stride <= {2**num_downsamplers}."
        )
    for name, value, choices in (
        ("output_head", output_head, OUTPUT_HEADS),
        ("red_variant", red_variant, RED_VARIANTS),
        ("red_norm", red_norm, RED_NORMS),
    ):
        if value not in choices:
            raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")
    size = spatial_size(sample_size)
    total_stride = 2**num_downsamplers
    if size is not None and any(s % total_stride for s in size):
        raise ValueError(
            f"sample_size {sample_size} is not divisible by the UNet's total stride {total_stride} "
            f"({num_downsamplers} downsamplers); use a multiple of {total_stride}."
        )
    if not _is_int(refiner_channels) or refiner_channels < 0:
        raise ValueError(f"refiner_channels must be a non-negative integer, got {refiner_channels!r}.")


# ------------------------------------------------------------------------ what the strided stem needs


class SubpixelSkip(nn.Module):
    """What a stride-s stem hides from a GroupNorm UNet, handed straight to the output.

    A stride-s stem aliases the image-wide s-periodic components of its input (the exact checkerboard
    frequencies, and the mean) onto the spatial mean of its feature maps; GroupNorm removes that mean before
    every nonlinearity, so nothing in the UNet can scale those components by a function of the timestep, and
    a student cannot predict them in the noise. DDPM sampling then never removes them: every sample keeps a
    fine s-pixel grid (measured on the quickstart: the error at those 3 frequencies was 7-24x that at their
    neighbours; docs/quickstart_student.md). This adds ``G(t) m`` back as an s-periodic pattern, where ``m``
    are the input's s x s sub-pixel means per channel and ``G(t)`` an s^2 x s^2 matrix per channel, linear in the time embedding
    and zero at the start (so the student begins as the paper's).
    """

    def __init__(self, channels: int, stride: int, embedding_dim: int):
        super().__init__()
        self.stride = stride
        self.gain = nn.Linear(embedding_dim, channels * stride**4)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    def forward(self, sample: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = sample.shape
        s = self.stride
        means = sample.reshape(batch, channels, height // s, s, width // s, s).mean(dim=(2, 4))
        gains = self.gain(embedding).to(sample.dtype).view(batch, channels, s * s, s * s)
        pattern = (gains @ means.reshape(batch, channels, s * s, 1)).view(batch, channels, s, s)
        return pattern.repeat(1, 1, height // s, width // s)


INPUT_SKIP_MIXINGS = ("full", "diagonal")


class InputSkip(nn.Module):
    """The noisy input, mixed across channels by a time-dependent matrix, added to the prediction.

    At high noise a denoiser's noise prediction is mostly its input passed through per pixel; a teacher
    does that with full-resolution convs, while a stride-s student has to carry every pixel through its
    coarse layers and back out of its head, and misses: on the CIFAR-10 parity teacher the best stride-2
    student's error in the noisiest third of the schedule was 2.5x the teacher's. Those steps decide a
    sample's global contrast and colour (sampling with the teacher for t >= 700 and the student below
    restored the teacher's contrast). This adds ``M(t) x_t``, ``M(t)`` an out x in channel matrix linear in
    the time embedding and zero at the start (the student begins as without it), so the coarse layers only
    have to predict the correction (c_skip in the preconditioning of Karras et al., 2022, learned).
    Its one tensor has the output's size, so the exact peak memory is unchanged.

    ``mixing="diagonal"`` keeps one gain per channel (in_channels == out_channels). On the parity student the
    learned cross-channel gain at t = 999 was about -0.02 where the exact linear predictor's is ~1e-5, and zeroing
    it at sampling for t >= 700 reduced the samples' colour overshoot; trained diagonal from the start, the
    student overshoots as much (saturation 0.194 vs 0.191), so that term is not the cause on its own.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, mixing: str = "full"):
        super().__init__()
        if mixing not in INPUT_SKIP_MIXINGS:
            raise ValueError(
                f"input_skip_mixing must be one of {', '.join(INPUT_SKIP_MIXINGS)}, got {mixing!r}."
            )
        if mixing == "diagonal" and in_channels != out_channels:
            raise ValueError("input_skip_mixing='diagonal' needs in_channels == out_channels.")
        self.in_channels, self.out_channels, self.mixing = in_channels, out_channels, mixing
        size = out_channels if mixing == "diagonal" else out_channels * in_channels
        self.gain = nn.Linear(embedding_dim, size)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    def forward(self, sample: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gain = self.gain(embedding).to(sample.dtype)
        if self.mixing == "diagonal":
            return gain[:, :, None, None] * sample
        mixing = gain.view(-1, self.out_channels, self.in_channels)
        return torch.einsum("boi,bihw->bohw", mixing, sample)


class FullResolutionRefiner(nn.Module):
    """A thin tail at the input's resolution: the only layers of the student that see single pixels.

    The paper's student sees the image through its stride-s stem only and paints its output with a
    per-block linear head, so the pixel-level part of denoising (telling fine detail from noise, which
    decides the low-noise end of the schedule, where such a student's error is largest) has to be carried
    through every coarse layer. This tail takes the noisy input and the coarse prediction, applies a 3x3 conv
    to ``channels`` features, a time-conditioned scale and shift, SiLU, and a 3x3 conv back, and adds the
    result to the prediction. The last conv starts at zero, so the student starts exactly as without it.

    ``depth`` > 1 adds ``depth - 1`` residual 3x3 convs (h + conv(SiLU(h))) at the same width before the last
    conv: more pixel-level capacity at no memory cost, since they run one after another when the UNet's skip
    tensors are gone.

    Memory: its largest tensors are ``channels`` x H x W; at ``channels`` <= C0 / s^2 (C0 the stem's
    width) they are no larger than the stem's own output, so the exact peak of the student is unchanged
    (tested for the quickstart and the google/ddpm-cifar10-32 students). The peak is usually set inside the
    UNet, so wider tails often fit too: `redistill memory` tells (the CIFAR-10 parity student at stride 2: up to
    32 channels, any depth).
    """

    def __init__(
        self, in_channels: int, out_channels: int, channels: int, embedding_dim: int, depth: int = 1
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + out_channels, channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(embedding_dim, 2 * channels)
        self.blocks = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in range(depth - 1)
        )
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, sample: torch.Tensor, prediction: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.conv_in(torch.cat([sample.to(prediction.dtype), prediction], dim=1))
        scale, shift = self.time_proj(nn.functional.silu(embedding)).to(hidden.dtype).chunk(2, dim=1)
        hidden = nn.functional.silu(torch.addcmul(shift[..., None, None], hidden, 1 + scale[..., None, None]))
        for block in self.blocks:
            hidden = hidden + block(nn.functional.silu(hidden))
        return prediction + self.conv_out(hidden)


def _make_resolution_preserving_downsampler(downsampler: nn.Module) -> None:
    if not isinstance(downsampler, Downsample2D) or not isinstance(downsampler.conv, nn.Conv2d):
        raise ValueError(
            f"Only Downsample2D with a conv can keep its resolution, got {type(downsampler).__name__}."
        )
    conv = downsampler.conv
    conv.stride = (1, 1)
    # A padding-0 downsampler pads (0, 1, 0, 1) by hand before its stride-2 conv; at stride 1 it must
    # pad symmetrically to keep the size (and the skip tensors aligned with the up path).
    conv.padding = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    downsampler.padding = conv.padding[0]


def _output_head(output_head: str, channels: int, out_channels: int, stride: int) -> nn.Module:
    """The head that restores full resolution (see `ReDistillUNet2DModel` for the three kinds)."""
    if output_head == "transposed_conv":
        return nn.ConvTranspose2d(channels, out_channels, kernel_size=stride, stride=stride)
    if output_head == "overlapping_transposed_conv":
        # Output size (H - 1) * s - 2 * (s / 2) + 2s = H * s: full resolution, each pixel fed by 2x2 inputs.
        return nn.ConvTranspose2d(
            channels, out_channels, kernel_size=2 * stride, stride=stride, padding=stride // 2
        )
    return nn.Sequential(
        nn.Conv2d(channels, out_channels * stride**2, kernel_size=3, padding=1), nn.PixelShuffle(stride)
    )


# ------------------------------------------------------------------- starting a student from a teacher


@torch.no_grad()
def init_head_near_zero(head: nn.Module, gain: float = 1e-5, zero_bias: bool = True) -> None:
    """The reference code's tail init: xavier-uniform weights with a tiny gain (and a zero bias), so a
    from-scratch student predicts ~0 at the start."""
    for module in head.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(module.weight, gain=gain)
            if zero_bias and module.bias is not None:
                module.bias.zero_()


@torch.no_grad()
def init_head_from_teacher(head: nn.Module, teacher_conv_out: nn.Conv2d, stride: int) -> None:
    """Start each s x s sub-pixel of the upsampling head as the teacher's 3x3 ``conv_out``.

    Pixel shuffle: the head's conv gets the teacher kernel once per sub-pixel (exact ICNR). Transposed
    conv: each tap gets the teacher kernel's sum, its response to a locally constant feature map, shared
    among the (kernel / stride)^2 taps that reach one output pixel.
    """
    weight, bias = teacher_conv_out.weight, teacher_conv_out.bias  # (out, C, 3, 3), (out,)
    out_channels = weight.shape[0]
    if isinstance(head, nn.ConvTranspose2d):  # weight (C, out, k, k), k = s or 2s
        taps_per_pixel = (head.kernel_size[0] // stride) * (head.kernel_size[1] // stride)
        response = weight.sum(dim=(2, 3)).t()[:, :, None, None] / taps_per_pixel
        head.weight.copy_(response.expand_as(head.weight))
        if bias is not None and head.bias is not None:
            head.bias.copy_(bias)
        return
    conv = head[0]  # pixel shuffle: conv to out * s^2 channels, ordered (out, s*s)
    if conv.weight.shape[-2:] != weight.shape[-2:]:
        raise ValueError(
            "head_init='teacher' needs the teacher's conv_out kernel size to match the head's conv."
        )
    conv.weight.copy_(weight.repeat_interleave(stride * stride, dim=0))
    if bias is not None and conv.bias is not None:
        conv.bias.copy_(bias.repeat_interleave(stride * stride))
    assert conv.weight.shape[0] == out_channels * stride * stride


def copy_matching_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every tensor of ``source`` whose name and shape exist in ``target``; return the skipped keys."""
    source_state = source.state_dict()
    target_state = target.state_dict()
    matched = {
        k: v for k, v in source_state.items() if k in target_state and target_state[k].shape == v.shape
    }
    target.load_state_dict(matched, strict=False)
    return sorted(set(target_state) - set(matched))


def tail_tap(model: UNet2DModel) -> str:
    """The student tap of the paper preset's tail block: the input of the tail (GroupNorm -> SiLU -> head),
    as in the reference code, so the block's output is renormalised before the head sees it."""
    return "conv_norm_out:input" if getattr(model, "conv_norm_out", None) is not None else "conv_out:input"


def resampler_taps(model: UNet2DModel) -> tuple[list[str], list[str]]:
    """Input and output taps of every downsampler and upsampler of a UNet, in forward order."""
    down, up = [], []
    for i, block in enumerate(model.down_blocks):
        for j, _ in enumerate(block.downsamplers or []):
            down += [f"down_blocks.{i}.downsamplers.{j}:input", f"down_blocks.{i}.downsamplers.{j}:output"]
    for i, block in enumerate(model.up_blocks):
        for j, _ in enumerate(block.upsamplers or []):
            up += [f"up_blocks.{i}.upsamplers.{j}:input", f"up_blocks.{i}.upsamplers.{j}:output"]
    return down, up


# ---------------------------------------------------------------------------------------- the student


class ReDistillUNet2DModel(UNet2DModel):
    """UNet2DModel with aggressive early downsampling (``stem_stride``) and optional RED blocks.

    Extra config: ``stem_stride`` (power of two), ``output_head`` (``"transposed_conv"``: the
    paper's ConvTranspose2d with kernel = stride = stem_stride; ``"overlapping_transposed_conv"``: kernel
    2 x stem_stride, each output pixel blending 2x2 low-resolution positions (on the quickstart it left
    more checkerboard than the paper's head: benchmarks/results/quickstart_variants.md);
    ``"pixel_shuffle"``: 3x3 conv to out_channels * s^2 + PixelShuffle), ``red_placement`` (list of ``{"tap", "channels"}``),
    ``red_kernel_size``, ``red_variant`` and ``red_norm`` (``"batch"``, the paper's, or ``"group"``),
    ``subpixel_skip`` (`SubpixelSkip`), ``refiner_channels`` and ``refiner_depth`` (`FullResolutionRefiner`), ``stem`` (``"conv"``, the
    paper's strided conv, or ``"space_to_depth"``, lossless), ``input_skip`` and ``input_skip_mixing`` (`InputSkip`). Everything else is UNet2DModel's config
    (listed again here because diffusers reads a model's config keys from its ``__init__`` signature).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = (
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        stem_stride: int = 2,
        output_head: str = "transposed_conv",
        red_placement: list[dict[str, Any]] | None = None,
        red_kernel_size: int = 3,
        red_variant: str = "full",
        red_norm: str = "batch",
        subpixel_skip: bool = False,
        refiner_channels: int = 0,
        stem: str = "conv",
        input_skip: bool = False,
        refiner_depth: int = 1,
        input_skip_mixing: str = "full",
    ):
        unet_arguments = {name: value for name, value in locals().items() if name in UNET2D_ARGUMENTS}
        validate_student_config(
            stem_stride=stem_stride,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            sample_size=sample_size,
            output_head=output_head,
            downsample_type=downsample_type,
            upsample_type=upsample_type,
            red_variant=red_variant,
            red_norm=red_norm,
            stem=stem,
            refiner_channels=refiner_channels,
        )
        if subpixel_skip and stem_stride > 1 and in_channels != out_channels:
            raise ValueError("subpixel_skip needs in_channels == out_channels (a noise-predicting denoiser).")
        super().__init__(**unet_arguments)
        self._move_strides(stem_stride, output_head, stem, refiner_channels)
        if not _is_int(refiner_depth) or refiner_depth < 1:
            raise ValueError(f"refiner_depth must be a positive integer, got {refiner_depth!r}.")
        self._add_full_resolution_paths(
            subpixel_skip, refiner_channels, input_skip, refiner_depth, input_skip_mixing
        )
        install_red_blocks(
            self, red_placement or [], kernel_size=red_kernel_size, variant=red_variant, norm=red_norm
        )

    def _move_strides(self, stem_stride: int, output_head: str, stem: str, refiner_channels: int = 0) -> None:
        """Stride ``stem_stride`` at the stem, the deepest downsamplers and upsamplers at stride 1, and
        the output head that restores full resolution."""
        if stem_stride == 1:
            return
        in_channels, stem_channels = self.config.in_channels, self.config.block_out_channels[0]
        kernel = self.conv_in.kernel_size[0]
        if stem == "conv" and kernel < stem_stride and not refiner_channels:
            warnings.warn(
                f"A {kernel}x{kernel} stem at stride {stem_stride} reads {kernel**2} of every {stem_stride**2} "
                "input pixels, so no layer sees the others (a denoiser cannot predict their noise): add "
                "refiner_channels (--refiner_channels 8, a full-resolution tail) or stem='space_to_depth'.",
                stacklevel=3,
            )
        self.conv_in.stride = (stem_stride, stem_stride)
        shifts = int(math.log2(stem_stride))
        # Down blocks 0..n-2 own a downsampler; the deepest `shifts` of them keep the resolution.
        num_downsamplers = len(self.down_blocks) - 1
        for index in range(num_downsamplers - shifts, num_downsamplers):
            for downsampler in self.down_blocks[index].downsamplers:
                _make_resolution_preserving_downsampler(downsampler)
        # Up block i mirrors down block n-2-i: the first `shifts` up blocks stop interpolating.
        for index in range(shifts):
            for upsampler in self.up_blocks[index].upsamplers:
                if not isinstance(upsampler, Upsample2D):
                    raise ValueError(
                        f"up_blocks.{index} uses {type(upsampler).__name__}; only Upsample2D is supported."
                    )
                upsampler.interpolate = False
        self.conv_out = _output_head(output_head, stem_channels, self.config.out_channels, stem_stride)
        if stem == "space_to_depth":  # built after the head, as before: seeded students keep their weights
            # Lossless: every pixel reaches the first conv (as s^2 channels), none is skipped by a stride.
            self.conv_in = nn.Sequential(
                nn.PixelUnshuffle(stem_stride),
                nn.Conv2d(in_channels * stem_stride**2, stem_channels, kernel_size=3, padding=1),
            )

    def _add_full_resolution_paths(
        self,
        subpixel_skip: bool,
        refiner_channels: int,
        input_skip: bool = False,
        refiner_depth: int = 1,
        input_skip_mixing: str = "full",
    ) -> None:
        """`SubpixelSkip`, `InputSkip` and `FullResolutionRefiner` (a stride-1 student needs none); they read
        the time embedding, which a forward hook keeps for them."""
        stride, in_channels, out_channels = (
            self.config.stem_stride,
            self.config.in_channels,
            self.config.out_channels,
        )
        embedding_dim = self.time_embedding.linear_2.out_features
        self.subpixel_path = None
        if subpixel_skip and stride > 1:
            self.subpixel_path = SubpixelSkip(out_channels, stride, embedding_dim)
        self.input_path = None
        if input_skip and stride > 1:
            self.input_path = InputSkip(in_channels, out_channels, embedding_dim, mixing=input_skip_mixing)
        self.refiner = None
        if refiner_channels and stride > 1:
            self.refiner = FullResolutionRefiner(
                in_channels, out_channels, refiner_channels, embedding_dim, depth=refiner_depth
            )
        self._time_embedding = None
        if self._full_resolution_paths():
            self.time_embedding.register_forward_hook(self._keep_time_embedding)

    def _full_resolution_paths(self) -> bool:
        return any(path is not None for path in (self.subpixel_path, self.input_path, self.refiner))

    def _keep_time_embedding(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self._time_embedding = output

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        """UNet2DModel's forward, plus the `SubpixelSkip` and `InputSkip` terms and the `FullResolutionRefiner`
        when the config asks for them."""
        output = super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)
        if not self._full_resolution_paths():
            return output
        embedding, self._time_embedding = self._time_embedding, None
        prediction = output.sample if return_dict else output[0]
        if self.subpixel_path is not None:
            prediction = prediction + self.subpixel_path(sample, embedding)
        if self.input_path is not None:
            prediction = prediction + self.input_path(sample, embedding)
        if self.refiner is not None:
            prediction = self.refiner(sample, prediction, embedding)
        if return_dict:
            output.sample = prediction
            return output
        return (prediction, *output[1:])

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `auto_map` (AutoModel's pointer to the folder's component file) is no init argument; drop it
        # here so that loading a saved student does not warn about it.
        config_dict = {k: v for k, v in config_dict.items() if k != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    def add_red_blocks(
        self, specs: Sequence[dict[str, Any]], kernel_size: int | None = None, variant: str | None = None
    ) -> None:
        """Hook RED blocks in after construction (`install_red_blocks`, shared with the classifiers)
        and record them in the config under the keys ``__init__`` reads back (so they are saved)."""
        kernel_size = kernel_size or self.config.red_kernel_size
        variant = variant or self.config.red_variant
        norm = self.config.red_norm
        specs = install_red_blocks(self, specs, kernel_size=kernel_size, variant=variant, norm=norm)
        self.register_to_config(
            red_placement=specs, red_kernel_size=kernel_size, red_variant=variant, red_norm=norm
        )
        # diffusers lists keys left at their defaults in `_use_default_values`, and from_config drops
        # them; these are no longer defaults, so `type(m).from_config(m.config)` must keep them.
        defaults = self.config.get("_use_default_values")
        if defaults:
            red_keys = ("red_placement", "red_kernel_size", "red_variant", "red_norm")
            kept = [k for k in defaults if k not in red_keys]
            self.register_to_config(_use_default_values=kept)

    def red_preset_taps(self, preset: str = "paper") -> list[str]:
        """The student taps of a RED placement preset, in order.

        ``paper``: the stem's output and the input of the tail (`tail_tap`), the two aggressive
        resampling layers (the TMLR placement). ``full``: also the input and output of every resampler
        that still changes the resolution (down blocks before the last log2(s), up blocks from log2(s)).
        """
        if preset not in RED_PRESETS:
            raise ValueError(f"Unknown RED preset {preset!r}; choose one of {', '.join(RED_PRESETS)}.")
        stride = self.config.stem_stride
        if stride == 1:
            raise ValueError(
                "RED presets pair the aggressive resampling layers; this student has stem_stride=1."
            )
        taps = ["conv_in:output", tail_tap(self)]
        if preset == "full":
            shifts, num_downsamplers = int(math.log2(stride)), len(self.down_blocks) - 1
            down, up = resampler_taps(self)
            taps += [t for t in down if int(t.split(".")[1]) < num_downsamplers - shifts]
            taps += [t for t in up if int(t.split(".")[1]) >= shifts]
        return taps

    def red_preset_specs(self, preset: str = "paper") -> list[dict[str, Any]]:
        """`add_red_blocks` specs of a preset: each tap with the channel count of the feature there."""
        modules = dict(self.named_modules())
        specs = []
        for tap in self.red_preset_taps(preset):
            name, where = parse_tap(tap)
            module = modules[name]
            if isinstance(module, (Downsample2D, Upsample2D)):
                channels = module.channels if where == "input" else module.out_channels
            elif isinstance(module, nn.GroupNorm):  # conv_norm_out
                channels = module.num_channels
            else:  # conv_in:output, conv_out:input: the stem's width
                channels = self.config.block_out_channels[0]
            specs.append({"tap": tap, "channels": channels})
        return specs

    @classmethod
    def from_teacher(
        cls,
        teacher: UNet2DModel,
        stem_stride: int = 2,
        init: str = "teacher",
        output_head: str = "transposed_conv",
        red_preset: str | None = None,
        red_kernel_size: int = 3,
        red_variant: str = "full",
        head_init: str = "paper",
        red_norm: str = "group",
        subpixel_skip: bool = False,
        refiner_channels: int = 0,
        stem: str = "conv",
        input_skip: bool = False,
        refiner_depth: int = 1,
        input_skip_mixing: str = "full",
    ) -> ReDistillUNet2DModel:
        """Derive a student from any UNet2DModel; with ``init="teacher"`` copy every same-shape weight.

        The output head has a new shape, so it never comes from the teacher as is. ``head_init``:
        ``"paper"`` (default) xavier-uniform with gain 1e-5 (and a zero bias unless the bias comes from
        the teacher), as the reference code does, so a from-scratch student predicts ~0 at the start;
        ``"random"`` PyTorch's default init; ``"teacher"`` every one of its s x s sub-pixels starts as the
        teacher's ``conv_out`` (ICNR-style), so the head begins free of the transposed conv's checkerboard.

        ``red_preset`` ("paper" or "full", `red_preset_taps`) places RED blocks; ``None`` builds the plain
        student (vanilla / output distillation). ``red_norm``: ``"group"`` (default: a denoiser's batch
        mixes noise levels; docs/red_norm.md) or ``"batch"`` (the paper's). A config without ``red_norm``
        loads as BatchNorm. ``subpixel_skip``, ``refiner_channels``, ``refiner_depth``, ``stem``, ``input_skip``: see the
        class docstring
        (off, 0 and ``"conv"``: the paper's student; pair ``stem="space_to_depth"`` with
        ``output_head="pixel_shuffle"``, its inverse).
        """
        if not isinstance(teacher, UNet2DModel):
            raise ValueError(f"The teacher must be a diffusers UNet2DModel, got {type(teacher).__name__}.")
        if init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {init!r}.")
        # The teacher's UNet2DModel arguments only: a student teacher's stride/RED/skip settings are this call's.
        config = {k: v for k, v in teacher.config.items() if k in UNET2D_ARGUMENTS}
        student = cls(
            **config,
            stem_stride=stem_stride,
            output_head=output_head,
            red_kernel_size=red_kernel_size,
            red_variant=red_variant,
            red_norm=red_norm,
            subpixel_skip=subpixel_skip,
            refiner_channels=refiner_channels,
            stem=stem,
            input_skip=input_skip,
            refiner_depth=refiner_depth,
            input_skip_mixing=input_skip_mixing,
        )
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {head_init!r}.")
        if init == "teacher":
            copy_matching_weights(teacher, student)
        if head_init == "teacher" and stem_stride > 1:
            init_head_from_teacher(student.conv_out, teacher.conv_out, stem_stride)
        elif head_init == "paper" and stem_stride > 1:
            # A teacher-initialised head keeps the teacher's bias (same shape): the mean colour it predicts.
            init_head_near_zero(student.conv_out, zero_bias=init != "teacher")
        if (teacher.device, teacher.dtype) != (student.device, student.dtype):
            student.to(device=teacher.device, dtype=teacher.dtype)
        if red_preset is not None:
            student.add_red_blocks(student.red_preset_specs(red_preset))
        return student
