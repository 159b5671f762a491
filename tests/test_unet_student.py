import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from redistill_diffusion import ReDistillUNet2DModel
from redistill_diffusion.diffusion.model import OUTPUT_HEADS, FullResolutionRefiner, InputSkip, SubpixelSkip
from redistill_diffusion.diffusion.unet_taps import red_specs, unet_tap_pairs

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "redistill_diffusion" / "configs"
TINY = Path(__file__).parent / "fixtures" / "tiny_unet_config.json"


def tiny_teacher(**overrides) -> UNet2DModel:
    config = {k: v for k, v in json.loads(TINY.read_text()).items() if not k.startswith("_")}
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DModel(**config)


def shipped_teacher(name: str) -> UNet2DModel:
    return UNet2DModel.from_config(UNet2DModel.load_config(PACKAGE_CONFIGS / name / "unet"))


def forward(model, resolution, batch=2, channels=3, **kwargs):
    x = torch.randn(batch, channels, resolution, resolution)
    return x, model(x, torch.randint(0, 1000, (batch,)), **kwargs).sample


@pytest.mark.parametrize("stem_stride", [1, 2, 4])
def test_output_shape_and_resolution_ladder(stem_stride):
    teacher = tiny_teacher()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=stem_stride)
    x, y = forward(student, 16)
    assert y.shape == x.shape
    # The deepest feature keeps the teacher's resolution: every block after it keeps its shape.
    seen = {}
    for name, model in (("teacher", teacher), ("student", student)):
        hook = model.mid_block.register_forward_hook(
            lambda m, a, o, name=name: seen.__setitem__(name, o.shape)
        )
        forward(model, 16)
        hook.remove()
    assert seen["teacher"] == seen["student"]


def test_stem_and_resampler_strides():
    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2)
    assert student.conv_in.stride == (2, 2)
    assert student.down_blocks[1].downsamplers[0].conv.stride == (
        1,
        1,
    )  # last downsampler gives its stride back
    assert student.down_blocks[0].downsamplers[0].conv.stride == (2, 2)
    assert student.up_blocks[0].upsamplers[0].interpolate is False
    assert student.up_blocks[1].upsamplers[0].interpolate is True
    assert isinstance(student.conv_out, torch.nn.ConvTranspose2d)
    assert student.conv_out.kernel_size == (2, 2) and student.conv_out.stride == (2, 2)


def test_teacher_init_copies_every_matching_weight():
    teacher = tiny_teacher()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="teacher")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    different = [k for k in s_state if k not in t_state or not torch.equal(s_state[k], t_state[k])]
    assert different == ["conv_out.weight"]  # the bias keeps its shape, so it is copied too
    random_student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="random")
    assert not torch.equal(random_student.conv_in.weight, teacher.conv_in.weight)


@pytest.mark.parametrize("output_head", OUTPUT_HEADS)
def test_forward_backward(output_head):
    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2, output_head=output_head)
    x, y = forward(student, 16)
    y.square().mean().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"in_channels": 1, "out_channels": 1},
        {"num_class_embeds": 10},
        {
            "block_out_channels": [8, 8, 16, 16, 16, 16],
            "down_block_types": ["DownBlock2D"] * 6,
            "up_block_types": ["UpBlock2D"] * 6,
            "sample_size": 64,
        },
    ],
    ids=["grayscale", "class_conditional", "six_levels"],
)
def test_teacher_variants(overrides):
    teacher = tiny_teacher(**overrides)
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=4)
    kwargs = {"class_labels": torch.tensor([1, 2])} if "num_class_embeds" in overrides else {}
    x, y = forward(student, teacher.config.sample_size, channels=teacher.config.in_channels, **kwargs)
    assert y.shape == x.shape


@pytest.mark.parametrize(
    "name,stem_stride,resolution",
    [("google-ddpm-cifar10-32", 2, 32), ("google-ddpm-cifar10-32", 4, 32), ("google-ddpm-cat-256", 8, 64)],
)
def test_shipped_configs(name, stem_stride, resolution, tmp_path):
    student = ReDistillUNet2DModel.from_teacher(shipped_teacher(name), stem_stride=stem_stride, init="random")
    x, y = forward(student, resolution, batch=1)
    assert y.shape == x.shape
    y.mean().backward()
    student.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    reloaded = ReDistillUNet2DModel.from_pretrained(tmp_path)
    assert reloaded.config.stem_stride == stem_stride
    assert all(
        torch.equal(a, b) for a, b in zip(student.state_dict().values(), reloaded.state_dict().values())
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"stem_stride": 3}, "power of two"),
        ({"stem_stride": 8}, "downsamplers to give back"),
        ({"output_head": "bilinear"}, "output_head"),
        ({"red_variant": "nope"}, "red_variant"),
        ({"red_norm": "layer"}, "red_norm"),
        ({"stem_stride": True}, "power of two"),  # a bool is an int: it must not build a stride-1 student
    ],
)
def test_invalid_student_configs(kwargs, message):
    config = {k: v for k, v in tiny_teacher().config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match=message):
        ReDistillUNet2DModel(**{**config, **kwargs})


def test_invalid_sample_size_and_block_type():
    with pytest.raises(ValueError, match="not divisible"):
        ReDistillUNet2DModel.from_teacher(tiny_teacher(sample_size=18), stem_stride=2)
    teacher = tiny_teacher(
        down_block_types=["DownBlock2D", "SkipDownBlock2D", "DownBlock2D"], norm_num_groups=4
    )
    with pytest.raises(ValueError, match="Unsupported down block"):
        ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2)


@pytest.mark.parametrize("preset,expected", [("paper", 2), ("full", 6)])
def test_red_presets_pair_by_resolution(preset, expected):
    teacher = tiny_teacher()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, red_preset=preset)
    pairs = unet_tap_pairs(student, teacher, preset)
    assert len(pairs) == expected == len(student.red_blocks)
    # The student file reads the preset's channel counts from the modules; a forward probe sees the same.
    assert student.config.red_placement == red_specs(student, [s for s, _ in pairs])
    assert pairs[:2] == [
        ("conv_in:output", "down_blocks.0.downsamplers.0:output"),
        ("conv_norm_out:input", "up_blocks.1.upsamplers.0:input"),  # the reference: before the tail norm
    ]
    x, y = forward(student, 16)
    assert y.shape == x.shape


def test_red_blocks_replace_features_and_round_trip(tmp_path):
    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2, red_preset="paper")
    with torch.no_grad():  # make the gate/residual non-trivial so the block visibly changes the output
        for p in student.red_blocks.parameters():
            p.add_(0.5)
    student.eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        with_red = student(x, t).sample
        handles_off = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2).eval()
        handles_off.load_state_dict({k: v for k, v in student.state_dict().items() if "red_blocks" not in k})
        without_red = handles_off(x, t).sample
    assert not torch.allclose(with_red, without_red)
    student.save_pretrained(tmp_path)
    reloaded = ReDistillUNet2DModel.from_pretrained(tmp_path).eval()
    assert len(reloaded.red_blocks) == 2
    with torch.no_grad():
        assert torch.allclose(reloaded(x, t).sample, with_red, atol=1e-6)


def test_identity_red_init_keeps_the_student_output_and_its_gradients():
    from redistill_diffusion import init_red_blocks

    torch.manual_seed(0)
    teacher = tiny_teacher()
    # PyTorch's head init: the near-zero paper head would hide what the blocks do to the features.
    plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="random")
    with_blocks = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, red_preset="paper", head_init="random"
    )
    with_blocks.load_state_dict(plain.state_dict(), strict=False)  # same head, so only the blocks differ
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        reference = plain(x, t).sample
        default_gap = (with_blocks(x, t).sample - reference).abs().mean() / reference.abs().mean()
    assert init_red_blocks(with_blocks, "identity") == 2
    with torch.no_grad():
        identity_gap = (with_blocks(x, t).sample - reference).abs().mean() / reference.abs().mean()
    assert identity_gap < 0.05 < default_gap  # default blocks change the output; identity ones barely do
    with_blocks(x, t).sample.square().mean().backward()
    for name, parameter in with_blocks.red_blocks.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name  # still trainable
    with pytest.raises(ValueError, match="Unknown RED init"):
        init_red_blocks(with_blocks, "zeros")


def test_deepcopy_rebinds_red_hooks():
    import copy

    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2, red_preset="paper").eval()
    clone = copy.deepcopy(student)
    with torch.no_grad():
        for p in clone.red_blocks.parameters():
            p.mul_(0.0)
        x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
        assert not torch.allclose(clone(x, t).sample, student(x, t).sample)


@pytest.mark.parametrize(
    "pipeline_cls,scheduler_cls", [(DDPMPipeline, DDPMScheduler), (DDIMPipeline, DDIMScheduler)]
)
def test_pipeline_round_trip_in_fresh_process(pipeline_cls, scheduler_cls, tmp_path):
    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2, red_preset="paper")
    pipe = pipeline_cls(unet=student, scheduler=scheduler_cls(num_train_timesteps=1000))
    images = pipe(
        batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 16, 16, 3)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["redistill_diffusion.diffusion.model", "ReDistillUNet2DModel"]
    script = (
        "import sys, torch\n"
        "import redistill_diffusion  # diffusers >= 0.42 loads only classes of modules the caller imported\n"
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "assert type(pipe.unet).__name__ == 'ReDistillUNet2DModel', type(pipe.unet)\n"
        "assert len(pipe.unet.red_blocks) == 2\n"
        "out = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type='np')\n"
        "print(out.images.shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 16, 16, 3)" in result.stdout


@pytest.mark.parametrize("output_head", OUTPUT_HEADS)
def test_head_init_from_teacher_reproduces_teacher_on_constant_features(output_head):
    teacher = tiny_teacher()
    student = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, output_head=output_head, head_init="teacher"
    )
    features = torch.full((1, 8, 4, 4), 0.7)  # a locally constant map: every sub-pixel sees the same input
    with torch.no_grad():
        expected = teacher.conv_out(torch.full((1, 8, 8, 8), 0.7))[
            ..., 2:6, 2:6
        ]  # away from the zero padding
        produced = student.conv_out(features)[..., 2:6, 2:6]
    assert produced.shape == (1, 3, 4, 4)
    assert torch.allclose(produced, expected, atol=1e-5)
    with pytest.raises(ValueError, match="head_init"):
        ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="zeros")


def test_from_config_keeps_red_placement_added_after_construction():
    student = ReDistillUNet2DModel.from_teacher(tiny_teacher(), stem_stride=2, red_preset="paper")
    clone = ReDistillUNet2DModel.from_config(student.config)
    assert [s["tap"] for s in clone.config.red_placement] == ["conv_in:output", "conv_norm_out:input"]
    assert len(clone.red_blocks) == 2


@pytest.mark.parametrize(
    "red_norm,norm_type", [("batch", torch.nn.BatchNorm2d), ("group", torch.nn.GroupNorm)]
)
def test_red_norm_round_trips_and_trains(red_norm, norm_type, tmp_path):
    student = ReDistillUNet2DModel.from_teacher(
        tiny_teacher(), stem_stride=2, red_preset="paper", red_norm=red_norm
    )
    norms = [
        m for m in student.red_blocks.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
    ]
    assert norms and all(isinstance(m, norm_type) for m in norms)
    # One training step moves every RED parameter.
    before = {k: v.clone() for k, v in student.red_blocks.state_dict().items() if v.is_floating_point()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    x, y = forward(student, 16)
    y.square().mean().backward()
    optimizer.step()
    moved = [
        k for k, v in student.red_blocks.state_dict().items() if k in before and not torch.equal(v, before[k])
    ]
    assert any(k.endswith("weight") for k in moved)
    student.save_pretrained(tmp_path)
    reloaded = ReDistillUNet2DModel.from_pretrained(tmp_path)
    assert reloaded.config.red_norm == red_norm
    assert all(
        isinstance(m, norm_type)
        for m in reloaded.red_blocks.modules()
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
    )
    student.eval(), reloaded.eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 900])
    with torch.no_grad():
        assert torch.allclose(student(x, t).sample, reloaded(x, t).sample, atol=1e-6)


def test_group_norm_red_block_normalises_each_sample_on_its_own():
    """GroupNorm: a sample's output does not depend on what else is in the batch (BatchNorm's does in training)."""
    from redistill_diffusion.red import REDBlock

    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    for norm, independent in (("group", True), ("batch", False)):
        block = REDBlock(16, norm=norm).train()
        alone = block(x[:1])
        together = block(torch.cat([x[:1], 10 * x[1:]]))[:1]
        assert torch.allclose(alone, together, atol=1e-5) is independent


def test_from_scratch_student_head_predicts_about_zero():
    """The reference code's tail init (xavier gain 1e-5): a from-scratch student starts near eps_hat = 0."""
    teacher = tiny_teacher()
    for head in OUTPUT_HEADS:
        student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="random", output_head=head)
        with torch.no_grad():
            _, y = forward(student, 16)
        assert y.abs().max() < 1e-3
        default = ReDistillUNet2DModel.from_teacher(
            teacher, stem_stride=2, init="random", output_head=head, head_init="random"
        )
        with torch.no_grad():
            _, y_default = forward(default, 16)
        assert y_default.abs().max() > 1e-2


def test_subpixel_skip_starts_as_the_paper_student_and_maps_periodic_input_to_output():
    teacher = tiny_teacher()
    plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="random")
    skip = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="random", subpixel_skip=True)
    assert skip.config.subpixel_skip and isinstance(skip.subpixel_path, SubpixelSkip)
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("subpixel_path.") for k in missing)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(skip(x, t).sample, plain(x, t).sample)  # zero gain: the paper's student exactly
        # A purely 2-periodic input (a checkerboard per channel) comes back scaled by the gain G(t).
        skip.subpixel_path.gain.bias.copy_(2.0 * torch.eye(4).repeat(3, 1, 1).flatten())
        y, _ = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
        checkerboard = ((y + y.T) % 2 * 2.0 - 1.0).expand(2, 3, 16, 16)
        embedding = torch.zeros(2, skip.subpixel_path.gain.in_features)
        assert torch.allclose(skip.subpixel_path(checkerboard, embedding), 2.0 * checkerboard)
        assert not torch.equal(skip(x, t).sample, plain(x, t).sample)
    reloaded = ReDistillUNet2DModel.from_config(skip.config)
    assert isinstance(reloaded.subpixel_path, SubpixelSkip)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        ReDistillUNet2DModel(**{**skip.config, "out_channels": 6})


@pytest.mark.parametrize("stem_stride", [2, 4])
def test_subpixel_skip_at_any_stride_and_refiner_start_as_the_paper_student(stem_stride):
    teacher = tiny_teacher()
    plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=stem_stride, head_init="random")
    both = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=stem_stride, head_init="random", subpixel_skip=True, refiner_channels=4
    )
    assert isinstance(both.refiner, FullResolutionRefiner) and both.config.refiner_channels == 4
    # stride s hides s^2 sub-pixel phases per channel: an s^2 x s^2 gain matrix each
    assert both.subpixel_path.gain.out_features == 3 * stem_stride**4
    missing, unexpected = both.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("subpixel_path.", "refiner.")) for k in missing)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(both(x, t).sample, plain(x, t).sample)  # zero-initialised: the paper's student
        torch.nn.init.normal_(both.refiner.conv_out.weight)
        changed = both(x, t).sample
        assert not torch.equal(changed, plain(x, t).sample)
        # the refiner sees single pixels: changing one input pixel changes the output around it
        x2 = x.clone()
        x2[:, :, 8, 8] += 1.0
        delta = (both(x2, t).sample - changed).abs().sum(dim=(0, 1))
        assert delta[7:10, 7:10].min() > 0
    tuple_output = both(x, t, return_dict=False)[0]
    assert torch.equal(tuple_output, changed)
    reloaded = ReDistillUNet2DModel.from_config(both.config)
    assert isinstance(reloaded.refiner, FullResolutionRefiner)
    with pytest.raises(ValueError, match="refiner_channels must be a non-negative integer"):
        ReDistillUNet2DModel(**{**both.config, "refiner_channels": -1})


def test_refiner_leaves_the_exact_peak_unchanged_on_the_shipped_teachers():
    from redistill_diffusion.memory import measure_peak_memory

    for name, channels in (("tiny-ddpm-32", 8), ("google-ddpm-cifar10-32", 8)):
        teacher = shipped_teacher(name)
        plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="random")
        refined = ReDistillUNet2DModel.from_teacher(
            teacher, stem_stride=2, init="random", refiner_channels=channels
        )
        peaks = [
            measure_peak_memory(m, input_shape=(3, 32, 32)).peak_bytes for m in (teacher, plain, refined)
        ]
        assert peaks[2] == peaks[1] and peaks[0] / peaks[2] > 3.9


def test_input_skip_starts_as_the_plain_student_passes_pixels_through_and_keeps_the_peak():
    from redistill_diffusion.memory import measure_peak_memory

    teacher = tiny_teacher()
    plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="random", subpixel_skip=True)
    skip = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, head_init="random", subpixel_skip=True, input_skip=True
    )
    assert skip.config.input_skip and isinstance(skip.input_path, InputSkip) and plain.input_path is None
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("input_path.") for k in missing)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(skip(x, t).sample, plain(x, t).sample)  # zero-initialised: the student without it
        # A gain of identity x 0.5 adds half the input, pixel for pixel (what no stride-2 layer can do).
        skip.input_path.gain.bias.copy_(0.5 * torch.eye(3).flatten())
        added = skip(x, t).sample - plain(x, t).sample
        assert torch.allclose(added, 0.5 * x, atol=1e-5)
    reloaded = ReDistillUNet2DModel.from_config(skip.config)
    assert isinstance(reloaded.input_path, InputSkip)
    # Its one tensor has the output's size: the exact peak does not move.
    peaks = [measure_peak_memory(m, input_shape=(3, 32, 32)).peak_bytes for m in (plain, skip)]
    assert peaks[0] == peaks[1]
    # Diagonal: one gain per channel, no colour mixing.
    diagonal = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, head_init="random", input_skip=True, input_skip_mixing="diagonal"
    )
    assert diagonal.input_path.gain.out_features == 3
    with torch.no_grad():
        diagonal.input_path.gain.bias.copy_(torch.tensor([0.5, 1.0, 2.0]))
        red_only = torch.zeros(1, 3, 16, 16)
        red_only[:, 0] = 1.0
        added = diagonal.input_path(red_only, torch.zeros(1, diagonal.input_path.gain.in_features))
        assert torch.equal(added[:, 0], 0.5 * red_only[:, 0]) and added[:, 1:].abs().max() == 0
    with pytest.raises(ValueError, match="input_skip_mixing must be one of"):
        ReDistillUNet2DModel(**{**diagonal.config, "input_skip_mixing": "lowrank"})


def test_a_deeper_refiner_starts_as_the_student_without_it_and_keeps_the_peak():
    from redistill_diffusion.memory import measure_peak_memory

    teacher = tiny_teacher()
    plain = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, head_init="random")
    deep = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, head_init="random", refiner_channels=4, refiner_depth=3
    )
    assert len(deep.refiner.blocks) == 2 and deep.config.refiner_depth == 3
    assert deep.load_state_dict(plain.state_dict(), strict=False).unexpected_keys == []
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(deep(x, t).sample, plain(x, t).sample)  # the last conv starts at zero
        torch.nn.init.normal_(deep.refiner.conv_out.weight)
        before = deep(x, t).sample
        torch.nn.init.normal_(deep.refiner.blocks[1].weight)  # the extra layers are on the path
        assert not torch.allclose(deep(x, t).sample, before)
    peaks = [measure_peak_memory(m, input_shape=(3, 32, 32)).peak_bytes for m in (plain, deep)]
    assert peaks[0] == peaks[1]
    assert isinstance(ReDistillUNet2DModel.from_config(deep.config).refiner.blocks[0], torch.nn.Conv2d)
    with pytest.raises(ValueError, match="refiner_depth must be a positive integer"):
        ReDistillUNet2DModel(**{**deep.config, "refiner_depth": 0})


@pytest.mark.parametrize("stem_stride", [2, 4])
def test_space_to_depth_stem_is_lossless_and_keeps_the_peak(stem_stride):
    from redistill_diffusion.memory import measure_peak_memory

    teacher = tiny_teacher()
    student = ReDistillUNet2DModel.from_teacher(
        teacher,
        stem_stride=stem_stride,
        stem="space_to_depth",
        output_head="pixel_shuffle",
        red_preset="paper",
    )
    unshuffle, conv = student.conv_in
    assert isinstance(unshuffle, torch.nn.PixelUnshuffle) and conv.in_channels == 3 * stem_stride**2
    x, y = forward(student, 16)
    assert y.shape == x.shape
    # lossless: two inputs that differ in one pixel give different first-layer inputs (a strided conv skips some)
    x2 = x.clone()
    x2[:, :, 1, 1] += 1.0
    assert not torch.equal(unshuffle(x2), unshuffle(x))
    conv_student = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=stem_stride, output_head="pixel_shuffle"
    )
    for convention in ("exact", "paper"):
        peaks = [
            measure_peak_memory(m, input_shape=(3, 16, 16), convention=convention).peak_bytes
            for m in (student, conv_student)
        ]
        assert peaks[0] <= peaks[1], convention
    reloaded = ReDistillUNet2DModel.from_config(student.config)
    assert isinstance(reloaded.conv_in, torch.nn.Sequential)
    with pytest.raises(ValueError, match="Unknown stem"):
        ReDistillUNet2DModel(**{**student.config, "stem": "wavelet"})


def test_a_stem_that_skips_pixels_warns_and_the_full_resolution_paths_do_not():
    """At stride 4 a 3x3 stem reads 9 of every 16 pixels: the others reach no layer of the student (the
    parity benchmark's stride-4 student without a refiner stalled at 0.65 held-out loss for it)."""
    import warnings

    teacher = tiny_teacher()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blind = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=4).eval()
    assert any("reads 9 of every 16 input pixels" in str(w.message) for w in caught)
    x = torch.randn(1, 3, 16, 16)
    poked = x.clone()
    poked[..., 6, 6] += 10.0  # rows/columns 2 mod 4: outside every 3x3 window (padding 1) at stride 4
    with torch.no_grad():
        assert torch.equal(blind.conv_in(x), blind.conv_in(poked))
    for kwargs in (
        {"stem_stride": 2},
        {"stem_stride": 4, "refiner_channels": 4},
        {"stem_stride": 4, "stem": "space_to_depth", "output_head": "pixel_shuffle"},
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            student = ReDistillUNet2DModel.from_teacher(teacher, **kwargs).eval()
        assert not [w for w in caught if "input pixels" in str(w.message)], kwargs
        if student.refiner is not None:  # the tail starts at zero; once trained it reads every pixel
            torch.nn.init.normal_(student.refiner.conv_out.weight)
        t = torch.tensor([10])
        with torch.no_grad():
            assert not torch.allclose(student(x, t).sample, student(poked, t).sample), kwargs
