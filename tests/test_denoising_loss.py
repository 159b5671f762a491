"""The held-out denoising loss: deterministic, batch-size independent, and it ranks a trained model above noise."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from redistill_diffusion.evaluation.denoising import denoising_loss, heldout_timesteps

TINY = Path(__file__).parent / "fixtures" / "tiny_unet_config.json"


def tiny_unet(seed=0) -> UNet2DModel:
    config = {k: v for k, v in json.loads(TINY.read_text()).items() if not k.startswith("_")}
    torch.manual_seed(seed)
    return UNet2DModel(**config).eval()


def test_timesteps_are_evenly_spaced_bin_centres():
    assert heldout_timesteps(1000, 10) == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert heldout_timesteps(1000, 1) == [500]
    with pytest.raises(ValueError, match="at least one timestep"):
        heldout_timesteps(1000, 0)


def test_same_model_same_number_whatever_the_batch_size():
    unet, scheduler = tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    images = torch.rand(12, 3, 16, 16) * 2 - 1
    a = denoising_loss(unet, scheduler, images, num_timesteps=6, batch_size=12)
    b = denoising_loss(unet, scheduler, images, num_timesteps=6, batch_size=5)
    assert set(a) == set(b)
    for key in a:
        assert abs(a[key] - b[key]) < 1e-6, key
    assert {"denoise_loss", "denoise_loss_low", "denoise_loss_mid", "denoise_loss_high"} <= set(a)
    per_t = [v for k, v in a.items() if k.startswith("denoise_loss_t")]
    assert len(per_t) == 6 and abs(sum(per_t) / 6 - a["denoise_loss"]) < 1e-9
    # Another noise seed is another draw: the number changes.
    c = denoising_loss(unet, scheduler, images, num_timesteps=6, seed=1)
    assert abs(c["denoise_loss"] - a["denoise_loss"]) > 1e-6


def test_a_perfect_predictor_scores_zero_and_a_zero_predictor_scores_one():
    """For epsilon prediction the loss of predicting the true noise is 0 and of predicting 0 is E[eps^2] ~ 1."""

    class Oracle(torch.nn.Module):
        def __init__(self, scheduler, images, noise_fn):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))
            self.scheduler, self.images = scheduler, images

        def forward(self, noisy, t):
            alpha = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            eps = (noisy - alpha.sqrt() * self.images[: noisy.shape[0]]) / (1 - alpha).sqrt()
            return type("Out", (), {"sample": eps})()

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, noisy, t):
            return type("Out", (), {"sample": torch.zeros_like(noisy)})()

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    oracle = denoising_loss(
        Oracle(scheduler, images, None), scheduler, images, num_timesteps=4, batch_size=64
    )
    assert oracle["denoise_loss"] < 1e-6
    zero = denoising_loss(Zero(), scheduler, images, num_timesteps=4)
    assert 0.9 < zero["denoise_loss"] < 1.1


def test_bad_images_are_one_clear_error():
    with pytest.raises(ValueError, match="N x C x H x W"):
        denoising_loss(tiny_unet(), DDPMScheduler(), torch.zeros(3, 16, 16))


def test_redistill_eval_denoise_matches_the_api(tmp_path, capsys):
    """`redistill eval --metrics denoise` gives the API's number for the same pipeline and held-out images;
    without --heldout_data it is a one-line error before any work."""
    import datasets
    from diffusers import DDPMPipeline
    from PIL import Image

    from redistill_diffusion.cli import main as cli_main
    from redistill_diffusion.data import make_shapes
    from redistill_diffusion.evaluation.denoising import load_heldout_images

    folder = tmp_path / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        str(folder)
    )
    images, labels = make_shapes(num_images=10, resolution=16, seed=3)
    heldout = tmp_path / "heldout.parquet"
    datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images]}).to_parquet(str(heldout))
    out = tmp_path / "eval"
    argv = ["eval", "--pipelines", str(folder), "--metrics", "denoise", "--heldout_data", str(heldout)]
    argv += [
        "--heldout_num_images",
        "6",
        "--heldout_timesteps",
        "4",
        "--num_samples",
        "2",
        "--sampler",
        "ddim",
    ]
    argv += ["--num_inference_steps", "2", "--output_dir", str(out)]
    assert cli_main(argv) == 0
    (row,) = json.loads((out / "metrics.json").read_text())["results"]
    expected = denoising_loss(
        tiny_unet(),
        DDPMScheduler(num_train_timesteps=1000),
        load_heldout_images(str(heldout), 16, 3, 6),
        num_timesteps=4,
    )
    assert abs(row["denoise_loss"] - expected["denoise_loss"]) < 1e-6
    assert len(row["denoise_loss_per_timestep"]) == 4
    assert "Held-out denoising loss" in (out / "metrics.md").read_text()
    capsys.readouterr()
    assert (
        cli_main(
            ["eval", "--pipelines", str(folder), "--metrics", "denoise", "--output_dir", str(tmp_path / "x")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--heldout_data" in err[0]
    assert not (tmp_path / "x").exists()
