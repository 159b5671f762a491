"""--timestep_bias_*: the biased draw of training timesteps (diffusers' SDXL example's flags), checked before
training, and a run without a bias draws exactly the timesteps it drew before the option existed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher

from redistill_diffusion.diffusion.arguments import DDPMArguments
from redistill_diffusion.diffusion.timesteps import sample_timesteps, timestep_weights


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "pipeline")


def _args(**bias) -> DDPMArguments:
    return replace(DDPMArguments(), **bias)


def test_later_bias_multiplies_the_noisiest_portions_share():
    weights = timestep_weights(
        _args(timestep_bias_strategy="later", timestep_bias_multiplier=2.0, timestep_bias_portion=0.3), 1000
    )
    assert weights.shape == (1000,) and weights.sum().item() == pytest.approx(1.0)
    assert weights[700:].eq(weights[999]).all() and weights[:700].eq(weights[0]).all()
    assert (weights[999] / weights[0]).item() == pytest.approx(2.0)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_timesteps(40_000, 1000, weights, generator)
    share = (drawn >= 700).float().mean().item()
    assert share == pytest.approx(0.6 / 1.3, abs=0.01)  # 300 x 2 of 300 x 2 + 700 x 1
    assert drawn.min() >= 0 and drawn.max() <= 999


def test_earlier_and_range_bias_their_own_timesteps():
    earlier = timestep_weights(
        _args(timestep_bias_strategy="earlier", timestep_bias_multiplier=3.0, timestep_bias_portion=0.1), 100
    )
    assert (earlier[9] / earlier[10]).item() == pytest.approx(3.0)
    only = timestep_weights(
        _args(
            timestep_bias_strategy="range",
            timestep_bias_multiplier=0.0,
            timestep_bias_begin=0,
            timestep_bias_end=90,
        ),
        100,
    )
    drawn = sample_timesteps(2_000, 100, only, torch.Generator().manual_seed(1))
    assert drawn.min() >= 90  # multiplier 0: the range is never drawn


def test_no_bias_is_the_uniform_draw_ddpm_always_made():
    assert timestep_weights(DDPMArguments(), 1000) is None
    drawn = sample_timesteps(64, 1000, None, torch.Generator().manual_seed(3))
    expected = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, expected)


@pytest.mark.parametrize(
    "bias, message",
    [
        (dict(timestep_bias_strategy="later", timestep_bias_multiplier=-1.0), "--timestep_bias_multiplier"),
        (
            dict(timestep_bias_strategy="later", timestep_bias_multiplier=float("nan")),
            "--timestep_bias_multiplier",
        ),
        (dict(timestep_bias_strategy="later", timestep_bias_portion=1.5), "--timestep_bias_portion"),
        (dict(timestep_bias_strategy="earlier", timestep_bias_portion=0.0001), "--timestep_bias_portion"),
        (
            dict(timestep_bias_strategy="range", timestep_bias_begin=500, timestep_bias_end=500),
            "--timestep_bias_begin 500 and --timestep_bias_end 500",
        ),
        (dict(timestep_bias_strategy="range", timestep_bias_end=2000), "--timestep_bias_end 2000"),
        (
            dict(timestep_bias_strategy="range", timestep_bias_multiplier=0.0, timestep_bias_end=1000),
            "leaves nothing to train on",
        ),
        (dict(timestep_bias_strategy="latest"), "--timestep_bias_strategy"),
    ],
)
def test_bad_bias_flags_are_one_line_errors(bias, message):
    with pytest.raises(ValueError, match=message) as raised:
        timestep_weights(_args(**bias), 1000)
    assert "\n" not in str(raised.value)


def test_a_biased_student_run_trains_on_the_biased_timesteps_and_refuses_bad_flags_before_loading_data(
    tmp_path, tiny_teacher, monkeypatch
):
    """Through the script's own entry: the flags reach the task, every drawn timestep lies in the range, and a
    bad value stops the run before the data is loaded."""
    from diffusers import DDPMScheduler

    from redistill_diffusion.diffusion import task_inputs
    from redistill_diffusion.diffusion.run import run_redistill

    drawn = []
    add_noise = DDPMScheduler.add_noise

    def recording_add_noise(self, samples, noise, timesteps):
        drawn.append(timesteps.clone())
        return add_noise(self, samples, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", recording_add_noise)
    bias = [
        "--timestep_bias_strategy",
        "range",
        "--timestep_bias_begin",
        "900",
        "--timestep_bias_end",
        "1000",
    ]
    bias += ["--timestep_bias_multiplier", "1e9"]
    run_redistill(
        ["--teacher_model_name_or_path", str(tiny_teacher), *fast_args(tmp_path / "out", steps=3), *bias]
    )
    assert len(drawn) >= 3 and all(t.min() >= 900 for t in drawn[:3])

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the bad flag was refused")

    monkeypatch.setattr(task_inputs, "load_image_dataset", no_data)
    with pytest.raises(ValueError, match="--timestep_bias_portion"):
        run_redistill(
            [
                "--teacher_model_name_or_path",
                str(tiny_teacher),
                *fast_args(tmp_path / "bad", steps=1),
                "--timestep_bias_strategy",
                "later",
                "--timestep_bias_portion",
                "2",
            ]
        )
    assert not (tmp_path / "bad" / "model_index.json").exists()
