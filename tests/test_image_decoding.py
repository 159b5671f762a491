"""Issue 24 item 7: one decoder (`image_decoding.decode_image`) for training and evaluation that scales
16-bit pixels (PIL's convert clipped them: all-white images, FID 497), flattens transparency over white,
converts palette / CMYK images and applies the EXIF orientation, once."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from redistill_diffusion.data import build_image_transform, load_image_dataset
from redistill_diffusion.evaluation.reference import load_reference, to_rgb_uint8
from redistill_diffusion.image_decoding import decode_image

GRADIENT_8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16 x 16, values 0..240


def _as_16_bit(values_8: np.ndarray) -> np.ndarray:
    return values_8.astype(np.uint16) * 257  # the same picture at 16 bits: 255 -> 65535


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_16_bit_greyscale_is_scaled_not_clipped():
    image = Image.open(io.BytesIO(_png(Image.fromarray(_as_16_bit(GRADIENT_8)))))
    assert image.mode == "I;16"
    assert (np.asarray(image.convert("L"))[:, 1:] == 255).all()  # what PIL alone gives: clipped to white
    grey = decode_image(image, "L")
    assert grey.mode == "L" and np.array_equal(np.asarray(grey), GRADIENT_8)
    rgb = np.asarray(decode_image(image, "RGB"))
    assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 1], GRADIENT_8)


def test_32_bit_integer_mode_and_uint16_arrays_are_read_as_16_bit():
    as_i = Image.fromarray(_as_16_bit(GRADIENT_8).astype(np.int32))
    assert as_i.mode == "I"
    assert np.array_equal(np.asarray(decode_image(as_i, "L")), GRADIENT_8)
    assert np.array_equal(np.asarray(decode_image(_as_16_bit(GRADIENT_8), "L")), GRADIENT_8)


def test_16_bit_pngs_train_and_score_like_the_same_pictures_at_8_bits(tmp_path):
    """The whole path: an image folder read by `datasets`, the training transform and the FID reference."""
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    for bits, folder in ((8, tmp_path / "eight"), (16, tmp_path / "sixteen")):
        folder.mkdir()
        for index, picture in enumerate(pictures):
            array = picture if bits == 8 else _as_16_bit(picture)
            Image.fromarray(array).save(folder / f"{index}.png")
    transform = build_image_transform(16, 3)
    eight = load_image_dataset(train_data_dir=str(tmp_path / "eight"))
    sixteen = load_image_dataset(train_data_dir=str(tmp_path / "sixteen"))
    assert sixteen[0]["image"].mode == "I;16"
    for a, b in zip(eight, sixteen):
        assert torch.equal(transform(a["image"]), transform(b["image"]))
    reference_8 = load_reference(str(tmp_path / "eight"))
    reference_16 = load_reference(str(tmp_path / "sixteen"))
    for index in range(3):
        assert torch.equal(reference_8[index], reference_16[index])
    assert reference_16[0].float().mean() < 200  # not all white


def test_grey_and_alpha_is_composited_over_white():
    grey = np.full((2, 3), 100, dtype=np.uint8)
    alpha = np.array([[0, 255, 128], [0, 255, 128]], dtype=np.uint8)
    image = Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA")
    decoded = np.asarray(decode_image(image, "L")).astype(int)
    assert decoded[0, 0] == 255 and decoded[0, 1] == 100  # transparent -> white, opaque unchanged
    assert abs(decoded[0, 2] - round(100 * 128 / 255 + 255 * (1 - 128 / 255))) <= 1
    rgb = np.asarray(decode_image(image, "RGB"))
    assert rgb.shape == (2, 3, 3) and tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 1]) == (100,) * 3


def test_rgba_transparent_pixels_do_not_show_their_stored_colour():
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (0, 0, 0, 0)  # transparent, stored as black
    pixels[0, 1] = (10, 200, 30, 255)
    image = Image.fromarray(pixels, mode="RGBA")
    decoded = np.asarray(decode_image(image))
    assert tuple(decoded[0, 0]) == (255, 255, 255) and tuple(decoded[0, 1]) == (10, 200, 30)


def test_palette_images_with_and_without_transparency():
    palette = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)  # 0: red, 1: blue
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    image.putpalette(palette)
    assert [tuple(p) for p in np.asarray(decode_image(image))[0]] == [(255, 0, 0), (0, 0, 255)]
    image.info["transparency"] = 1  # blue is the transparent colour
    reopened = Image.open(io.BytesIO(_png(image)))
    assert reopened.mode == "P" and "transparency" in reopened.info
    assert [tuple(p) for p in np.asarray(decode_image(reopened))[0]] == [(255, 0, 0), (255, 255, 255)]
    assert np.asarray(decode_image(reopened, "L"))[0, 1] == 255


def test_cmyk_is_converted_to_rgb_colours():
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=100)
    for source in (image, buffer.getvalue()):
        red = np.asarray(decode_image(source)).reshape(-1, 3).mean(axis=0)
        assert red[0] > 240 and red[1] < 15 and red[2] < 15, red


def _oriented_jpeg(orientation: int) -> bytes:
    """A 4 wide x 2 high image whose top-left pixel is white, the rest black, with an EXIF orientation."""
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_exactly_once(tmp_path):
    decoded = decode_image(_oriented_jpeg(6))  # 6: rotate 90 degrees clockwise to display
    assert decoded.size == (2, 4)  # width 2, height 4
    assert np.asarray(decoded)[0, 1].min() > 200  # the white corner is now top-right
    folder = tmp_path / "rotated"
    folder.mkdir()
    (folder / "a.png").write_bytes(_oriented_jpeg(6))
    dataset = load_image_dataset(train_data_dir=str(folder))  # datasets applies the tag when decoding
    assert np.array_equal(np.asarray(decode_image(dataset[0]["image"])), np.asarray(decoded))
    assert decode_image(_oriented_jpeg(1)).size == (4, 2)


def test_bytes_and_datasets_dicts_are_decoded():
    data = _png(Image.fromarray(np.full((3, 3, 3), 7, dtype=np.uint8)))
    assert np.asarray(decode_image(data)).max() == 7
    assert np.asarray(decode_image({"bytes": data, "path": None})).max() == 7
    assert tuple(to_rgb_uint8({"bytes": data, "path": None}).shape) == (3, 3, 3)


def test_unreadable_arrays_and_modes_are_one_clear_error():
    with pytest.raises(ValueError, match="dtype float64"):
        decode_image(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="RGB or L"):
        decode_image(np.zeros((4, 4, 3), dtype=np.uint8), "CMYK")
