"""Teacher vs student at a glance: held-out shapes, what a person sees in samples, one side-by-side PNG.

The quickstart ends here: a person should see in one picture (teacher grid | student grid | memory per
layer) and two numbers (the held-out denoising loss of each, ``diffusion.evaluate.pipeline_denoising_loss``
on ``heldout_shapes``) how close a 4x-lower-memory student is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .moved import moved_attribute

# The quickstart trains on make_shapes(seed=0); seed 1 draws shapes it never saw.
HELDOUT_SHAPES_SEED = 1


def heldout_shapes(
    num_images: int = 256, resolution: int = 32, seed: int = HELDOUT_SHAPES_SEED
) -> torch.Tensor:
    """Built-in coloured shapes the quickstart did not train on, as N x 3 x H x W in [-1, 1]."""
    from ..data import make_shapes

    images, _ = make_shapes(num_images=num_images, resolution=resolution, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def mean_brightness(images: torch.Tensor) -> float:
    """Mean pixel value of a batch of samples on the 0-255 scale (uint8 images, or floats in [-1, 1]).

    A student whose noise prediction is biased at the image-wide mean drifts darker or lighter over a
    sampling chain; the held-out loss barely sees that bias, a person sees it at once."""
    x = images.float()
    if images.dtype != torch.uint8:
        x = (x.clamp(-1, 1) + 1) * 127.5
    return float(x.mean())


def checkerboard_share(images: torch.Tensor, period: int = 2) -> float:
    """Share of the images' power (mean removed) at the frequencies of a ``period``-pixel grid.

    A stride-``period`` upsampling head whose sub-pixels disagree paints exactly these frequencies (the
    transposed-conv checkerboard): ~0.0003 for the quickstart teacher's samples, 0.05-0.25 for students
    with a visible fine grid. Images: N x C x H x W (any range), H and W multiples of ``period``.
    """
    if images.ndim != 4 or images.shape[-1] % period or images.shape[-2] % period:
        raise ValueError(f"checkerboard_share needs N x C x H x W images with H, W multiples of {period}.")
    x = images.float()
    spectrum = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    height, width = x.shape[-2:]
    grid = spectrum[..., :: height // period, :: width // period].sum()  # (0, 0) is zero: mean removed
    return float(grid / spectrum.sum().clamp_min(1e-12))


def write_side_by_side(
    panels: list[tuple[str | Path, str]],
    path: str | Path,
    title: str | None = None,
    columns: int | None = None,
) -> Path:
    """One PNG of images side by side (e.g. teacher grid | student grid | memory plot), each under its
    caption; ``columns`` wraps many panels (of one aspect ratio) into rows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..image_decoding import decode_image

    missing = [str(image) for image, _ in panels if not Path(image).is_file()]
    if missing:
        raise FileNotFoundError(f"side-by-side figure: no image at {', '.join(missing)}.")
    images = [decode_image(image, "RGB") for image, _ in panels]
    if columns is None or columns >= len(images):
        widths = [image.width / image.height for image in images]  # panels share one height
        figure, axes = plt.subplots(
            1,
            len(images),
            figsize=(4.2 * sum(widths), 4.8),
            gridspec_kw={"width_ratios": widths},
            squeeze=False,
        )
    else:
        rows = -(-len(images) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.6 * rows), squeeze=False)
    axes = axes.flatten()
    for axis in axes[len(images) :]:
        axis.axis("off")
    for axis, image, (_, caption) in zip(axes, images, panels):
        axis.imshow(image)
        axis.set_title(caption, fontsize=10)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def __getattr__(name: str):
    return moved_attribute(__name__, name)  # pipeline_denoising_loss, now diffusion.evaluate's
