"""`ReDistillUNet2DModel`: a diffusers `UNet2DModel` that downsamples hard at the stem.

The student keeps every block and width of its teacher; only strides change (the paper's
student; docs/method.md "The student: `ReDistillUNet2DModel`"):
``conv_in`` gets stride ``stem_stride``, the last log2(stem_stride) ``Downsample2D`` layers get
stride 1, the matching ``Upsample2D`` layers skip their interpolation, and the output head
restores full resolution. The deepest feature map keeps the teacher's size, so every weight but
the output head has the teacher's shape. RED blocks (``red_placement`` config, modules in ``model.red_blocks``) are hooked in at
construction, so they are part of the saved model and of every forward pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch

# DiffusionPipeline.from_pretrained imports the module named in model_index.json (this one) and
# needs `ModelMixin` there to recognise the class as a loadable model.
from diffusers import (
    ModelMixin,  # noqa: F401
    UNet2DModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..red import RED_NORMS, RED_VARIANTS, install_red_blocks, red_block_specs_at
from ..taps import match_by_resolution, parse_tap, probe_shapes

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
OUTPUT_HEADS = ("transposed_conv", "overlapping_transposed_conv", "pixel_shuffle")
STEMS = ("conv", "space_to_depth")
RED_PRESETS = ("paper", "full")
HEAD_INITS = ("paper", "random", "teacher")


def tail_tap(model: UNet2DModel) -> str:
    """The student tap of the paper preset's tail block: the input of the tail (GroupNorm -> SiLU -> head),
    as in the reference code, so the block's output is renormalised before the head sees it."""
    return "conv_norm_out:input" if getattr(model, "conv_norm_out", None) is not None else "conv_out:input"


def _spatial_size(sample_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if sample_size is None:
        return None
    if isinstance(sample_size, int):
        return (sample_size, sample_size)
    return (int(sample_size[0]), int(sample_size[1]))


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
) -> None:
    """Raise one clear ValueError for a student that cannot be built (before any weights exist)."""
    # bool is an int: stem_stride=True would silently build a stride-1 student.
    bad_type = isinstance(stem_stride, bool) or not isinstance(stem_stride, int)
    if bad_type or stem_stride < 1 or stem_stride & (stem_stride - 1):
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
    if output_head not in OUTPUT_HEADS:
        raise ValueError(f"Unknown output_head {output_head!r}; choose one of {', '.join(OUTPUT_HEADS)}.")
    if red_variant not in RED_VARIANTS:
        raise ValueError(f"Unknown red_variant {red_variant!r}; choose one of {', '.join(RED_VARIANTS)}.")
    if red_norm not in RED_NORMS:
        raise ValueError(f"Unknown red_norm {red_norm!r}; choose one of {', '.join(RED_NORMS)}.")
    size = _spatial_size(sample_size)
    total_stride = 2**num_downsamplers
    if size is not None and any(s % total_stride for s in size):
        raise ValueError(
            f"sample_size {sample_size} is not divisible by the UNet's total stride {total_stride} "
            f"({num_downsamplers} downsamplers); use a multiple of {total_stride}."
        )


class ReDistillUNet2DModel(UNet2DModel):
    """UNet2DModel with aggressive early downsampling (``stem_stride``) and optional RED blocks.

    Extra config: ``stem_stride`` (power of two), ``output_head`` (``"transposed_conv"``: the
    paper's ConvTranspose2d with kernel = stride = stem_stride; ``"overlapping_transposed_conv"``: kernel
    2 x stem_stride, each output pixel blending 2x2 low-resolution positions (on the quickstart it left
    more checkerboard than the paper's head: benchmarks/results/quickstart_variants.md);
    ``"pixel_shuffle"``: 3x3 conv to out_channels * s^2 + PixelShuffle), ``red_placement`` (list of ``{"tap", "channels"}``),
    ``red_kernel_size``, ``red_variant`` and ``red_norm`` (``"batch"``, the paper's, or ``"group"``),
    ``subpixel_skip`` (`SubpixelSkip`), ``refiner_channels`` (`FullResolutionRefiner`), ``stem`` (``"conv"``, the
    paper's strided conv, or ``"space_to_depth"``, lossless). Everything else is UNet2DModel's config.
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
    ):
        if stem not in STEMS:
            raise ValueError(f"Unknown stem {stem!r}; choose one of {', '.join(STEMS)}.")
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
        )
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            center_input_sample=center_input_sample,
            time_embedding_type=time_embedding_type,
            time_embedding_dim=time_embedding_dim,
            freq_shift=freq_shift,
            flip_sin_to_cos=flip_sin_to_cos,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            mid_block_scale_factor=mid_block_scale_factor,
            downsample_padding=downsample_padding,
            downsample_type=downsample_type,
            upsample_type=upsample_type,
            dropout=dropout,
            act_fn=act_fn,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            attn_norm_num_groups=attn_norm_num_groups,
            norm_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            add_attention=add_attention,
            class_embed_type=class_embed_type,
            num_class_embeds=num_class_embeds,
            num_train_timesteps=num_train_timesteps,
        )
        self._move_strides(stem_stride, output_head, block_out_channels[0], out_channels)
        if stem == "space_to_depth" and stem_stride > 1:
            # Lossless: every pixel reaches the first conv (as s^2 channels), none is skipped by a stride.
            self.conv_in = nn.Sequential(
                nn.PixelUnshuffle(stem_stride),
                nn.Conv2d(in_channels * stem_stride**2, block_out_channels[0], kernel_size=3, padding=1),
            )
        embedding_dim = self.time_embedding.linear_2.out_features
        self.subpixel_path = None
        if subpixel_skip and stem_stride > 1:
            if in_channels != out_channels:
                raise ValueError(
                    "subpixel_skip needs in_channels == out_channels (a noise-predicting denoiser)."
                )
            self.subpixel_path = SubpixelSkip(out_channels, stem_stride, embedding_dim)
        bad_refiner = isinstance(refiner_channels, bool) or not isinstance(refiner_channels, int)
        if bad_refiner or refiner_channels < 0:
            raise ValueError(f"refiner_channels must be a non-negative integer, got {refiner_channels!r}.")
        self.refiner = None
        if refiner_channels and stem_stride > 1:
            self.refiner = FullResolutionRefiner(in_channels, out_channels, refiner_channels, embedding_dim)
        self._time_embedding = None
        if self.subpixel_path is not None or self.refiner is not None:
            self.time_embedding.register_forward_hook(self._keep_time_embedding)
        install_red_blocks(
            self, red_placement or [], kernel_size=red_kernel_size, variant=red_variant, norm=red_norm
        )

    def _move_strides(
        self, stem_stride: int, output_head: str, stem_channels: int, out_channels: int
    ) -> None:
        if stem_stride == 1:
            return
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
        if output_head == "transposed_conv":
            self.conv_out = nn.ConvTranspose2d(
                stem_channels, out_channels, kernel_size=stem_stride, stride=stem_stride
            )
        elif output_head == "overlapping_transposed_conv":
            # Output size (H - 1) * s - 2 * (s / 2) + 2s = H * s: full resolution, each pixel fed by 2x2 inputs.
            self.conv_out = nn.ConvTranspose2d(
                stem_channels,
                out_channels,
                kernel_size=2 * stem_stride,
                stride=stem_stride,
                padding=stem_stride // 2,
            )
        else:
            self.conv_out = nn.Sequential(
                nn.Conv2d(stem_channels, out_channels * stem_stride**2, kernel_size=3, padding=1),
                nn.PixelShuffle(stem_stride),
            )

    def _keep_time_embedding(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self._time_embedding = output

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        """UNet2DModel's forward, plus the `SubpixelSkip` term and the `FullResolutionRefiner` when the
        config asks for them."""
        output = super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)
        if self.subpixel_path is None and self.refiner is None:
            return output
        embedding, self._time_embedding = self._time_embedding, None
        prediction = output.sample if return_dict else output[0]
        if self.subpixel_path is not None:
            prediction = prediction + self.subpixel_path(sample, embedding)
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
        """Hook RED blocks in after construction (`red.install_red_blocks`, shared with the classifiers)
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
    ) -> ReDistillUNet2DModel:
        """Derive a student from any UNet2DModel; with ``init="teacher"`` copy every same-shape weight.

        The output head has a new shape, so it never comes from the teacher as is. ``head_init``:
        ``"paper"`` (default) xavier-uniform with gain 1e-5 (and a zero bias unless the bias comes from
        the teacher), as the reference code does, so a from-scratch student predicts ~0 at the start; ``"random"`` PyTorch's default init; ``"teacher"``
        every one of its s x s sub-pixels starts as the teacher's ``conv_out`` (ICNR-style), so the
        head begins free of the transposed conv's checkerboard.

        ``red_preset`` ("paper" or "full") places RED blocks at the student taps of
        :func:`unet_tap_pairs`; ``None`` builds the plain student (vanilla / output distillation).
        ``red_norm``: ``"group"`` (default: a denoiser's batch mixes noise levels; measured better, see
        docs/red_norm.md) or ``"batch"`` (the paper's). A config without ``red_norm`` loads as BatchNorm.
        ``subpixel_skip``: see `SubpixelSkip` (off: the paper's student). ``refiner_channels``: width of the
        `FullResolutionRefiner` (0, the default: none, the paper's student). ``stem``: ``"conv"`` (the
        paper's strided 3x3 conv) or ``"space_to_depth"`` (lossless: PixelUnshuffle(s) then a 3x3 conv at the
        low resolution; pair it with ``output_head="pixel_shuffle"``, its inverse. A Haar-wavelet stem is the
        same model up to a fixed orthogonal mix of the s^2 channels, which the first conv absorbs).
        """
        if not isinstance(teacher, UNet2DModel):
            raise ValueError(f"The teacher must be a diffusers UNet2DModel, got {type(teacher).__name__}.")
        if init not in ("teacher", "random"):
            raise ValueError(f"init must be 'teacher' or 'random', got {init!r}.")
        # The teacher's UNet2DModel arguments only: a student teacher's stride/RED/skip settings are this call's.
        unet_arguments = inspect.signature(UNet2DModel.__init__).parameters
        config = {k: v for k, v in teacher.config.items() if k in unet_arguments}
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
            student.add_red_blocks(
                red_specs(student, [s for s, _ in unet_tap_pairs(student, teacher, red_preset)])
            )
        return student


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


class FullResolutionRefiner(nn.Module):
    """A thin tail at the input's resolution: the only layers of the student that see single pixels.

    The paper's student sees the image through its stride-s stem only and paints its output with a
    per-block linear head, so the pixel-level part of denoising (telling fine detail from noise, which
    decides the low-noise end of the schedule, where such a student's error is largest) has to be carried
    through every coarse layer. This tail takes the noisy input and the coarse prediction, applies a 3x3 conv
    to ``channels`` features, a time-conditioned scale and shift, SiLU, and a 3x3 conv back, and adds the
    result to the prediction. The last conv starts at zero, so the student starts exactly as without it.

    Memory: its largest tensors are ``channels`` x H x W; at ``channels`` <= C0 / s^2 (C0 the stem's
    width) they are no larger than the stem's own output, so the exact peak of the student is unchanged
    (tested for the quickstart and the google/ddpm-cifar10-32 students).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, embedding_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + out_channels, channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(embedding_dim, 2 * channels)
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


def unet_example_inputs(
    model: UNet2DModel, batch_size: int = 1, resolution: int | None = None
) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) of one forward pass at the model's sample size: zero images, timestep 0 (and
    class 0 for a class-conditional UNet), on the model's device and dtype. The shape probes use it."""
    size = _spatial_size(resolution or model.config.sample_size)
    if size is None:
        raise ValueError("The UNet config has no sample_size; pass a resolution.")
    param = next(model.parameters())
    sample = torch.zeros(batch_size, model.config.in_channels, *size, device=param.device, dtype=param.dtype)
    kwargs = {}
    if model.class_embedding is not None:
        kwargs["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=param.device)
    return (sample, torch.zeros(batch_size, dtype=torch.long, device=param.device)), kwargs


def _probe(model: UNet2DModel, taps: Sequence[str]) -> dict[str, torch.Size]:
    args, kwargs = unet_example_inputs(model)
    return probe_shapes(model, taps, *args, **kwargs)


def red_specs(model: UNet2DModel, taps: Sequence[str]) -> list[dict[str, Any]]:
    """RED block specs (tap + the channel count found there) for ``taps`` of a UNet."""
    args, kwargs = unet_example_inputs(model)
    return red_block_specs_at(model, taps, *args, **kwargs)


def _resampler_taps(model: UNet2DModel) -> tuple[list[str], list[str]]:
    """Input and output taps of every downsampler and upsampler, in forward order."""
    down, up = [], []
    for i, block in enumerate(model.down_blocks):
        for j, _ in enumerate(block.downsamplers or []):
            down += [f"down_blocks.{i}.downsamplers.{j}:input", f"down_blocks.{i}.downsamplers.{j}:output"]
    for i, block in enumerate(model.up_blocks):
        for j, _ in enumerate(block.upsamplers or []):
            up += [f"up_blocks.{i}.upsamplers.{j}:input", f"up_blocks.{i}.upsamplers.{j}:output"]
    return down, up


def unet_tap_pairs(
    student: ReDistillUNet2DModel, teacher: UNet2DModel, preset: str = "paper"
) -> list[tuple[str, str]]:
    """(student_tap, teacher_tap) pairs of a RED placement preset, matched by resolution.

    ``paper``: stem output <-> the teacher's downsampler output at that resolution; the input of the
    student's tail (``conv_norm_out``, before GroupNorm -> SiLU -> head, as in the reference code) <->
    the teacher's upsampler input at that resolution (the TMLR placement).
    ``full``: also the inputs/outputs of the student's remaining (still resampling) layers, each
    paired with the next unused teacher resampling tap of the same size.
    """
    if preset not in RED_PRESETS:
        raise ValueError(f"Unknown RED preset {preset!r}; choose one of {', '.join(RED_PRESETS)}.")
    stride = getattr(student.config, "stem_stride", 1)
    if stride == 1:
        raise ValueError("RED presets pair the aggressive resampling layers; this student has stem_stride=1.")
    teacher_down, teacher_up = _resampler_taps(teacher)
    teacher_shapes = _probe(teacher, teacher_down + teacher_up)
    student_down, student_up = _resampler_taps(student)
    tail = tail_tap(student)
    student_taps = ["conv_in:output", tail] + student_down + student_up
    student_shapes = _probe(student, student_taps)
    # Only resamplers that still change the resolution are placement points in the student.
    active_down = [t for t in student_down if _changes_resolution(t, student_shapes)]
    active_up = [t for t in student_up if _changes_resolution(t, student_shapes)]

    pairs = []
    pairs += match_by_resolution(
        {"conv_in:output": student_shapes["conv_in:output"]},
        {t: teacher_shapes[t] for t in teacher_down if t.endswith(":output")},
    )
    up_inputs = {t: teacher_shapes[t] for t in reversed(teacher_up) if t.endswith(":input")}
    pairs += match_by_resolution({tail: student_shapes[tail]}, up_inputs)
    if preset == "full":
        used = {t for _, t in pairs}
        pairs += match_by_resolution(
            {t: student_shapes[t] for t in active_down},
            {t: teacher_shapes[t] for t in teacher_down if t not in used},
        )
        pairs += match_by_resolution(
            {t: student_shapes[t] for t in active_up},
            {t: teacher_shapes[t] for t in teacher_up if t not in used},
        )
    return pairs


def _changes_resolution(tap: str, shapes: dict[str, torch.Size]) -> bool:
    module, _ = parse_tap(tap)
    return shapes[f"{module}:input"][-2:] != shapes[f"{module}:output"][-2:]
