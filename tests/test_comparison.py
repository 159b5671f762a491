"""The quickstart's teacher-vs-student summary: held-out shapes, pipeline losses, the side-by-side PNG."""

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image
from test_denoising_loss import tiny_unet

from redistill_diffusion.data import make_shapes
from redistill_diffusion.diffusion.evaluate import pipeline_denoising_loss
from redistill_diffusion.evaluation.comparison import checkerboard_share, heldout_shapes, write_side_by_side
from redistill_diffusion.evaluation.denoising import denoising_loss
from redistill_diffusion.evaluation.report import load_sample_grid, save_sample_grid


def test_heldout_shapes_are_unseen_images_in_model_range():
    images = heldout_shapes(num_images=8, resolution=16)
    assert images.shape == (8, 3, 16, 16)
    assert images.min() >= -1.0 and images.max() <= 1.0
    trained, _ = make_shapes(num_images=8, resolution=16, seed=0)
    assert not np.array_equal(
        (images.add(1).mul(127.5).round().permute(0, 2, 3, 1).numpy()).astype(np.uint8), trained
    )


def test_pipeline_loss_is_the_loss_of_its_unet(tmp_path):
    unet = tiny_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    images = heldout_shapes(num_images=4, resolution=unet.config.sample_size)
    expected = denoising_loss(unet.eval(), scheduler, images, num_timesteps=3)
    assert pipeline_denoising_loss(tmp_path, images, num_timesteps=3) == pytest.approx(expected, rel=1e-6)


def test_side_by_side_puts_every_panel_in_one_png(tmp_path):
    paths = []
    for index, size in enumerate([(64, 64), (64, 64), (128, 64)]):
        path = tmp_path / f"panel{index}.png"
        Image.fromarray(np.full((size[1], size[0], 3), 60 * index, dtype=np.uint8)).save(path)
        paths.append(path)
    out = write_side_by_side(
        [(p, f"panel {i}") for i, p in enumerate(paths)], tmp_path / "out" / "both.png", title="t"
    )
    figure = Image.open(out)
    assert figure.width > 2 * figure.height  # three panels across, the last twice as wide
    wrapped = Image.open(
        write_side_by_side([(p, "x") for p in paths[:2] * 3], tmp_path / "rows.png", columns=4)
    )
    assert wrapped.height > figure.height  # six panels in two rows of four
    with pytest.raises(FileNotFoundError, match="no image at"):
        write_side_by_side([(tmp_path / "missing.png", "x")], tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_checkerboard_share_sees_a_two_pixel_grid_and_not_smooth_shapes():
    shapes = heldout_shapes(num_images=16, resolution=32)
    smooth = checkerboard_share(shapes)
    y, x = np.indices((32, 32))
    grid = torch.from_numpy(((x + y) % 2) * 2.0 - 1.0).float()  # the (pi, pi) checkerboard
    textured = checkerboard_share(shapes + 0.1 * grid)
    assert smooth < 0.01 < 0.05 < textured
    assert checkerboard_share(grid.expand(2, 3, 32, 32)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiples of 2"):
        checkerboard_share(torch.zeros(1, 3, 31, 32))


def test_sample_grid_round_trips(tmp_path):
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    path = save_sample_grid(images, tmp_path / "grid.png", columns=3)
    assert torch.equal(load_sample_grid(path, 16), images)
    with pytest.raises(ValueError, match="not a grid of 32-pixel images"):
        load_sample_grid(path, 32)


def test_mean_brightness_reads_uint8_and_model_range_alike():
    import torch

    from redistill_diffusion.evaluation.comparison import mean_brightness

    dark = torch.full((2, 3, 4, 4), 64, dtype=torch.uint8)
    assert mean_brightness(dark) == 64.0
    assert mean_brightness(torch.full((2, 3, 4, 4), 0.0)) == pytest.approx(127.5)  # [-1, 1]: 0 is mid-grey
    assert mean_brightness(torch.full((1, 3, 2, 2), 5.0)) == 255.0  # clamped like a saved image
