"""Evaluation: reproducible sampling, torch-fidelity metrics over Inception and a classifier extractor,
the reference-statistics cache, early one-line errors, and `redistill eval` end to end. Offline:
Inception weights are random (Kaiming-normal convs) and saved by the test; images are made here."""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from datasets import Dataset
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import save_file

from redistill_diffusion import ReDistillUNet2DModel
from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.commands.eval import main as script_main
from redistill_diffusion.commands.eval import parse_eval_args
from redistill_diffusion.diffusion.evaluate import evaluate_pipelines
from redistill_diffusion.diffusion.sampling import sample_images
from redistill_diffusion.evaluation import (
    compute_metrics,
    load_reference,
    register_classifier_feature_extractor,
)

TINY = Path(__file__).parent / "fixtures" / "tiny_unet_config.json"


# ---------------------------------------------------------------- helpers and fixtures


def tiny_unet(seed=0, **overrides) -> UNet2DModel:
    config = {k: v for k, v in json.loads(TINY.read_text()).items() if not k.startswith("_")}
    config.update(overrides)
    torch.manual_seed(seed)
    return UNet2DModel(**config)


def smooth_images(n, seed, size=16) -> torch.Tensor:
    """Dark, smooth colour blobs: one 'distribution'."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=size, mode="bilinear") * 90).to(torch.uint8)


def noisy_images(n, seed, size=16) -> torch.Tensor:
    """Bright per-pixel noise: a clearly different 'distribution'."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(150, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def write_parquet(path: Path, images: torch.Tensor, column="image", mode="RGB") -> Path:
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()).convert(mode) for img in images]
    Dataset.from_dict({column: pil, "label": list(range(len(pil)))}).to_parquet(str(path))
    return path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """torch-fidelity's Inception with random Kaiming-normal convs, saved as its weights loader expects."""
    import torch_fidelity.feature_extractor_inceptionv3 as module
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with pytest.MonkeyPatch.context() as patch:  # build the architecture without downloading weights
        patch.setattr(module, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(0)
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, generator=generator)
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("inception_cache"))


@pytest.fixture(scope="session")
def classifier_weights(tmp_path_factory) -> str:
    """A tiny timm classifier as a safetensors checkpoint; its head is randomised so IS is not trivially 1."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    nn.init.normal_(model.get_classifier().weight, std=1.0)
    path = tmp_path_factory.mktemp("classifier") / "model.safetensors"
    save_file(model.state_dict(), str(path))
    return str(path)


CLASSIFIER = "timm:test_resnet"


@pytest.fixture(scope="module")
def pipeline_folders(tmp_path_factory) -> tuple[str, str]:
    """A tiny teacher DDPM pipeline and its stem-stride-2 ReDistill student, saved as folders."""
    root = tmp_path_factory.mktemp("pipelines")
    teacher = tiny_unet()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    DDPMPipeline(unet=teacher, scheduler=scheduler).save_pretrained(root / "teacher")
    DDPMPipeline(unet=student, scheduler=scheduler).save_pretrained(root / "student")
    return str(root / "teacher"), str(root / "student")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, f"not a one-line error: {message!r}"
    return message


# ---------------------------------------------------------------- sampling


def test_same_seed_gives_same_images_whatever_the_batch_size(pipeline_folders):
    teacher, _ = pipeline_folders
    kwargs = dict(sampler="ddim", num_inference_steps=2, progress=False)
    first = sample_images(teacher, 5, batch_size=2, seed=3, **kwargs).images
    again = sample_images(teacher, 5, batch_size=5, seed=3, **kwargs).images
    other = sample_images(teacher, 5, batch_size=2, seed=4, **kwargs).images
    assert first.dtype == torch.uint8 and first.shape == (5, 3, 16, 16)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({img.numpy().tobytes() for img in first}) == 5  # every sample has its own noise


def test_generate_samples_is_a_deprecated_name_of_sample_images(pipeline_folders):
    from redistill_diffusion.diffusion.sampling import generate_samples

    teacher, _ = pipeline_folders
    kwargs = dict(sampler="ddim", num_inference_steps=2, seed=3, progress=False)
    with pytest.warns(DeprecationWarning, match="sample_images"):
        images = generate_samples(teacher, 2, **kwargs)
    assert torch.equal(images, sample_images(teacher, 2, **kwargs).images)


def test_ddpm_sampler_and_grayscale_pipeline_give_rgb_uint8():
    pipeline = DDPMPipeline(unet=tiny_unet(in_channels=1, out_channels=1), scheduler=DDPMScheduler())
    images = sample_images(
        pipeline, 3, sampler="ddpm", num_inference_steps=3, batch_size=2, progress=False
    ).images
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    again = sample_images(
        pipeline, 3, sampler="ddpm", num_inference_steps=3, batch_size=3, progress=False
    ).images
    assert torch.equal(images, again)  # ancestral noise is per sample too


# ---------------------------------------------------------------- Inception (random weights)


def test_inception_fid_of_a_set_with_itself_is_zero_and_is_kid_are_finite(inception_weights, inception_cache):
    images = smooth_images(4, seed=0)
    result = compute_metrics(
        images,
        images,
        metrics=("fid", "isc", "kid"),
        feature_extractor_weights_path=inception_weights,
        kid_subset_size=4,
        kid_subsets=10,
        isc_splits=2,
        cache_root=inception_cache,
        progress=False,
    )
    assert abs(result["fid"]) < 1e-3
    assert np.isfinite(result["isc_mean"]) and result["isc_mean"] >= 1.0 and np.isfinite(result["isc_std"])
    assert (
        np.isfinite(result["kid_mean"]) and abs(result["kid_mean"]) < 1e-3 and np.isfinite(result["kid_std"])
    )
    assert not any(key.startswith("fd_") for key in result)


def test_inception_fid_separates_different_sets(inception_weights, inception_cache):
    reference = smooth_images(4, seed=0)  # the same reference as above: its features come from the cache
    kwargs = dict(
        metrics=("fid",),
        feature_extractor_weights_path=inception_weights,
        cache_root=inception_cache,
        progress=False,
    )
    same_distribution = compute_metrics(smooth_images(4, seed=1), reference, **kwargs)["fid"]
    different = compute_metrics(noisy_images(4, seed=1), reference, **kwargs)["fid"]
    assert 0 < same_distribution < different
    assert different > 3 * same_distribution


# ---------------------------------------------------------------- classifier extractor


def test_classifier_extractor_reports_fd_under_its_own_name(classifier_weights, tmp_path):
    reference = smooth_images(24, seed=0)
    kwargs = dict(
        metrics=("fid", "isc", "kid"),
        feature_extractor=CLASSIFIER,
        feature_extractor_weights_path=classifier_weights,
        kid_subset_size=8,
        kid_subsets=10,
        isc_splits=4,
        cache_root=str(tmp_path),
        progress=False,
    )
    itself = compute_metrics(reference, reference, **kwargs)
    same = compute_metrics(smooth_images(24, seed=1), reference, **kwargs)
    different = compute_metrics(noisy_images(24, seed=1), reference, **kwargs)
    assert {"fd_test_resnet", "is_test_resnet_mean", "kd_test_resnet_mean"} <= set(same)
    assert not {"fid", "isc_mean", "kid_mean"} & set(same)  # never called FID
    assert abs(itself["fd_test_resnet"]) < 1e-4
    assert 0 < same["fd_test_resnet"] < different["fd_test_resnet"]
    assert same["kd_test_resnet_mean"] < different["kd_test_resnet_mean"]
    assert np.isfinite(same["is_test_resnet_mean"]) and same["is_test_resnet_mean"] > 1.0


def test_any_module_can_be_the_feature_extractor(tmp_path):
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))  # a feature map: pooled by the wrapper

    torch.manual_seed(0)
    module = Embed()
    choice = register_classifier_feature_extractor(module, label="embed")
    assert all(p.requires_grad for p in module.parameters())  # the caller's model is left untouched
    result = compute_metrics(
        noisy_images(12, 1), smooth_images(12, 0), metrics=("fid", "kid"), feature_extractor=choice,
        kid_subset_size=6, cache_root=str(tmp_path), progress=False,
    )  # fmt: skip
    assert result["fd_embed"] > 0 and np.isfinite(result["kd_embed_mean"])
    with pytest.raises(ValueError) as error:
        compute_metrics(smooth_images(4, 0), None, metrics=("isc",), feature_extractor=choice, progress=False)
    assert "IS needs class logits" in one_line(error)


def test_classifier_saved_by_the_classification_module_is_an_extractor(tmp_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from redistill_diffusion.classification import create_teacher, save_classifier

    torch.manual_seed(0)
    model = create_teacher("test_resnet", num_classes=10, cifar_stem=True)
    normalisation = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    folder = save_classifier(model, tmp_path / "cifar_classifier", data_config=normalisation)
    kwargs = dict(
        metrics=("fid", "isc"),
        feature_extractor_weights_path=str(folder),
        isc_splits=2,
        cache_root=str(tmp_path / "cache"),
        progress=False,
    )
    result = compute_metrics(
        noisy_images(8, 1), smooth_images(8, 0), feature_extractor="classifier", **kwargs
    )
    assert result["fd_test_resnet"] > 0 and np.isfinite(result["is_test_resnet_mean"])
    # a timm: spec on such a folder is loaded the same way (students need load_classifier's strides)
    routed = compute_metrics(noisy_images(8, 1), smooth_images(8, 0), feature_extractor=CLASSIFIER, **kwargs)
    assert routed["reference_cache_hit"] is True and routed["fd_test_resnet"] == result["fd_test_resnet"]
    registered = [cls for name, cls in FEATURE_EXTRACTORS_REGISTRY.items() if name.startswith("test_resnet-")]
    assert any(tuple(cls.mean) == tuple(normalisation["mean"]) for cls in registered)  # its own normalisation


# ---------------------------------------------------------------- reference data and cache


def test_reference_statistics_are_cached_and_keyed_by_size(classifier_weights, tmp_path):
    reference = write_parquet(tmp_path / "reference.parquet", smooth_images(20, seed=0))
    cache = tmp_path / "cache"
    kwargs = dict(
        metrics=("fid", "kid"),
        feature_extractor=CLASSIFIER,
        feature_extractor_weights_path=classifier_weights,
        kid_subset_size=6,
        cache_root=str(cache),
        progress=False,
    )
    samples = noisy_images(10, seed=2)
    first = compute_metrics(samples, str(reference), **kwargs)
    assert first["reference_cache_hit"] is False and first["reference_num_images"] == 20
    cached = sorted(p.name for p in cache.iterdir())
    assert cached and all(name.startswith("redistill-reference.parquet-n20-") for name in cached)
    second = compute_metrics(samples, str(reference), **kwargs)
    assert second["reference_cache_hit"] is True
    assert second["fd_test_resnet"] == pytest.approx(first["fd_test_resnet"], rel=1e-9)
    capped = compute_metrics(samples, str(reference), reference_max_images=12, **kwargs)
    assert capped["reference_cache_hit"] is False and capped["reference_num_images"] == 12
    assert capped["fd_test_resnet"] != first["fd_test_resnet"]


def test_reference_sources_become_rgb_tensors_at_the_sample_resolution(tmp_path):
    gray = smooth_images(6, seed=0, size=20)
    parquet = write_parquet(tmp_path / "gray.parquet", gray, column="img", mode="L")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, img in enumerate(gray):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    for source in (parquet, folder):
        reference = load_reference(str(source), resolution=(16, 16))
        assert len(reference) == 6
        item = reference[0]
        assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)
    gray_item = load_reference(str(parquet))[0]
    assert torch.equal(gray_item[0], gray_item[1])  # grayscale repeated, not dropped


# ---------------------------------------------------------------- bad input


def test_bad_inputs_fail_in_one_line_before_any_sampling(pipeline_folders, classifier_weights, tmp_path):
    teacher, _ = pipeline_folders
    pipeline = DDPMPipeline.from_pretrained(teacher)
    calls = []
    pipeline.unet.register_forward_hook(lambda *args: calls.append(1))
    reference = write_parquet(tmp_path / "ok.parquet", smooth_images(6, seed=0))
    no_image = tmp_path / "no_image.parquet"
    Dataset.from_dict({"label": [1, 2, 3]}).to_parquet(str(no_image))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet")
    no_unet = tmp_path / "no_unet"
    (no_unet / "scheduler").mkdir(parents=True)
    (no_unet / "model_index.json").write_text("{}")
    good = dict(
        reference=str(reference),
        num_samples=4,
        num_inference_steps=1,
        feature_extractor=CLASSIFIER,
        feature_extractor_weights_path=classifier_weights,
        kid_subset_size=2,
        cache_root=str(tmp_path / "cache"),
        progress=False,
    )
    cases = [
        (FileNotFoundError, "does not exist", dict(reference=str(tmp_path / "missing.parquet"))),
        (ValueError, "no image column", dict(reference=str(no_image))),
        (ValueError, "could not be read", dict(reference=str(corrupt))),
        (ValueError, "IS needs class logits", dict(feature_extractor=nn.Conv2d(3, 4, 3), metrics=("fid", "isc"))),
        (ValueError, "metrics must be chosen", dict(metrics=("fid", "lpips"))),
        (ValueError, "sampler must be", dict(sampler="euler")),
        (ValueError, "at least 2", dict(num_samples=1)),
        (FileNotFoundError, "do not exist", dict(feature_extractor_weights_path=str(tmp_path / "nope.safetensors"))),
        (FileNotFoundError, "do not exist", dict(feature_extractor="inception-v3-compat",
                                                 feature_extractor_weights_path=str(tmp_path / "nope.pth"))),
    ]  # fmt: skip
    for error_type, text, change in cases:
        with pytest.raises(error_type) as error:
            evaluate_pipelines([pipeline], **{**good, **change})
        assert text in one_line(error), (change, str(error.value))
    with pytest.raises(ValueError) as error:
        evaluate_pipelines([pipeline, str(no_unet)], **good)
    assert "no unet" in one_line(error)
    assert calls == []  # nothing was sampled for any of the bad inputs


def test_kid_subset_larger_than_the_sets_is_lowered_with_a_warning(classifier_weights, tmp_path):
    with pytest.warns(UserWarning, match="kid_subset_size 1000"):
        result = compute_metrics(
            noisy_images(6, 0), smooth_images(9, 0), metrics=("kid",), feature_extractor=CLASSIFIER,
            feature_extractor_weights_path=classifier_weights, cache_root=str(tmp_path), progress=False,
        )  # fmt: skip
    assert result["kid_subset_size"] == 6 and np.isfinite(result["kd_test_resnet_mean"])


def test_compute_metrics_is_the_single_set_case_of_evaluate_images(classifier_weights, tmp_path):
    from redistill_diffusion.evaluation import evaluate_images

    kwargs = dict(
        metrics=("fid", "kid"), feature_extractor=CLASSIFIER, feature_extractor_weights_path=classifier_weights,
        kid_subset_size=4, cache_root=str(tmp_path), progress=False,
    )  # fmt: skip
    samples, reference = noisy_images(6, 1), smooth_images(8, 0)
    single = compute_metrics(samples, reference, **kwargs)
    [row] = evaluate_images({"mine": samples}, reference, **kwargs)
    assert (row["images"], row["resolution"], row["seed"]) == ("mine", [16, 16], 0)
    assert (
        single["reference_cache_hit"] is False and row["reference_cache_hit"] is True
    )  # the same cache entry
    context = ("images", "reference", "resolution", "seed", "device", "reference_cache_hit")
    assert {k: v for k, v in row.items() if k not in context} == {
        k: v for k, v in single.items() if k != "reference_cache_hit"
    }
    assert np.isfinite(single["fd_test_resnet"]) and single["kid_subset_size"] == 4


# ---------------------------------------------------------------- `redistill eval` end to end


def test_redistill_eval_end_to_end(pipeline_folders, classifier_weights, tmp_path):
    teacher, student = pipeline_folders
    reference = write_parquet(tmp_path / "cifar_like.parquet", smooth_images(16, seed=0), column="img")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"reference: {reference}\nnum_samples: 4\nsampler: ddpm\nnum_inference_steps: 1000\n"
        "metrics: [fid, isc, kid]\n"
    )
    output = tmp_path / "out"
    argv = [
        "eval", "--recipe", str(recipe), "--pipelines", teacher, student,
        "--num_samples", "8", "--sampler", "ddim", "--num-inference-steps", "2", "--batch_size", "4",
        "--feature_extractor", CLASSIFIER, "--feature_extractor_weights_path", classifier_weights,
        "--cache_root", str(tmp_path / "cache"), "--output_dir", str(output),
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default KID subset of 1000 is lowered to 8, with a warning
        assert cli_main(argv) == 0

    results = json.loads((output / "metrics.json").read_text())["results"]
    assert [r["pipeline"] for r in results] == [teacher, student]
    for r in results:
        assert r["num_samples"] == 8 and r["sampler"] == "ddim" and r["num_inference_steps"] == 2  # flags win
        assert r["feature_extractor"] == CLASSIFIER and "fid" not in r
        for key in ("fd_test_resnet", "is_test_resnet_mean", "is_test_resnet_std", "kd_test_resnet_mean",
                    "kd_test_resnet_std", "images_per_second"):  # fmt: skip
            assert np.isfinite(r[key]), key
        assert r["kid_subset_size"] == 8 and isinstance(r["peak_bytes"], int)
        grid = Image.open(output / r["sample_grid"])
        assert grid.size == (3 * 16 + 4 * 2, 3 * 16 + 4 * 2)  # 8 samples: 3 columns, 2 px padding
    assert results[0]["reference_cache_hit"] is False and results[1]["reference_cache_hit"] is True
    assert (
        results[1]["peak_bytes"] * 3 < results[0]["peak_bytes"]
    )  # the student's lower peak shows in the table

    table = (output / "metrics.md").read_text()
    assert "FD-test_resnet" in table and "FID" not in table.split("\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and "DDIM 2" in rows[0]
    assert re.search(r"\d+\.\d{2} ± \d+\.\d{2}", rows[1])  # IS mean ± std


def test_standalone_script_reports_errors_in_one_line(capsys, tmp_path):
    assert script_main(["--pipelines", str(tmp_path / "missing"), "--reference", "x.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate_fid_is: error:") and "\n" not in err and "does not exist" in err


# ---------------------------------------------------------------- `redistill eval` flags and recipes

EVAL_RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("eval_*.yaml"))


@pytest.mark.parametrize("recipe", EVAL_RECIPES, ids=lambda path: path.name)
def test_shipped_eval_recipes_parse_through_the_training_parser(recipe):
    import yaml

    assert EVAL_RECIPES, "no recipes/eval_*.yaml found"
    values = yaml.safe_load(recipe.read_text())
    argv = ["--recipe", str(recipe), "--pipelines", "teacher/", "student/", "--num-inference-steps", "3"]
    settings = parse_eval_args(argv)
    assert settings.pipelines == ["teacher/", "student/"] and settings.num_inference_steps == 3  # flags win
    for key, value in values.items():
        if key not in ("pipelines", "num_inference_steps"):
            assert getattr(settings, key) == value, key


def test_eval_flags_recipe_lists_and_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("images: a.parquet b/\nmetrics: fid kid\nsampler: ddpm\n")
    settings = parse_eval_args(["--recipe", str(recipe), "--update_card", "--batch-size", "8"])
    assert settings.images == ["a.parquet", "b/"] and settings.metrics == ["fid", "kid"]
    assert settings.sampler == "ddpm" and settings.update_card and settings.batch_size == 8
    assert parse_eval_args(["--pipelines", "p"]).num_samples == 1000  # the dataclass default
    for argv, message in (
        (["--recipe", str(recipe), "--pipelines", "p"], "either --pipelines or --images"),
        (["--pipelines", "p", "--metrics", "fidd"], "invalid choice"),
        (["--pipelines", "p", "--sampler", "euler"], "invalid choice"),
        (["--pipelines", "p", "--num_threads", "0"], "num_threads"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_eval_args(argv)
    recipe.write_text("pipelines: [p]\nnum_sample: 3\n")
    with pytest.raises(ValueError, match="unknown key.*num_sample"):
        parse_eval_args(["--recipe", str(recipe)])


def test_pil_samples_are_the_uint8_samples(tmp_path):
    """Training's sample grid and evaluation draw the same images for the same seed (one sampling path);
    `sample_pil_images` is a deprecated name of `sample_images(...).pil_images()`."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from redistill_diffusion.diffusion.sampling import sample_pil_images

    unet = tiny_unet()
    for pipeline, sampler in (
        (DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)), "ddpm"),
        (DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)), "ddim"),
    ):
        result = sample_images(
            pipeline, 3, sampler=sampler, num_inference_steps=2, seed=5, device="cpu", progress=False
        )
        pil, tensors = result.pil_images(), result.images
        with pytest.warns(DeprecationWarning, match="sample_pil_images"):
            old = sample_pil_images(pipeline, 3, seed=5, num_inference_steps=2)
        assert [np.array(i).tolist() for i in old] == [np.array(i).tolist() for i in pil]
        assert [image.mode for image in pil] == ["RGB"] * 3
        assert torch.equal(
            torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in pil]), tensors
        )


def test_the_classifier_extractor_is_registered_by_the_classification_task():
    """evaluation/ names no task: classification/ registers `--feature_extractor classifier`, and the package
    __init__ imports it, so the name resolves whatever was imported first."""
    from redistill_diffusion.evaluation.extractors import CLASSIFIER_LOADERS, resolve_feature_extractor

    assert "classifier" in CLASSIFIER_LOADERS
    with pytest.raises(
        ValueError, match="classifier needs --feature_extractor_weights_path: a folder written by"
    ):
        resolve_feature_extractor("classifier")
    with pytest.raises(ValueError, match=r"timm:<model_name>, classifier, or one of torch-fidelity's"):
        resolve_feature_extractor("no-such-extractor")


def test_names_that_moved_to_the_diffusion_task_keep_their_earlier_spelling():
    """Pipeline sampling and evaluation are diffusion/'s now; `redistill_diffusion.evaluation.<name>` still
    gives the same object (a DeprecationWarning naming the new home), and the package root exports them."""
    import redistill_diffusion
    from redistill_diffusion import evaluation
    from redistill_diffusion.diffusion import evaluate, pipeline_io, sampling
    from redistill_diffusion.evaluation import comparison

    moved = {
        "evaluate_pipelines": evaluate,
        "denoiser_peak_memory": evaluate,
        "sample_images": sampling,
        "generate_samples": sampling,
        "sample_pil_images": sampling,
        "with_sampler": sampling,
        "SAMPLERS": sampling,
        "load_pipeline": pipeline_io,
    }
    for name, home in moved.items():
        with pytest.warns(DeprecationWarning, match=f"evaluation.{name} moved to {home.__name__}.{name}"):
            assert getattr(evaluation, name) is getattr(home, name)
    with pytest.warns(DeprecationWarning, match="moved to redistill_diffusion.diffusion.evaluate"):
        assert comparison.pipeline_denoising_loss is evaluate.pipeline_denoising_loss
    assert redistill_diffusion.evaluate_pipelines is evaluate.evaluate_pipelines
    assert redistill_diffusion.sample_images is sampling.sample_images
    assert redistill_diffusion.load_pipeline is pipeline_io.load_pipeline
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        evaluation.no_such_name  # noqa: B018
    # the earlier module paths too, in a process that imports them first
    code = (
        "from redistill_diffusion.evaluation.sampling import sample_images\n"
        "from redistill_diffusion.evaluation.evaluate import evaluate_pipelines\n"
        "import redistill_diffusion.diffusion.sampling as s, redistill_diffusion.diffusion.evaluate as e\n"
        "assert sample_images is s.sample_images and evaluate_pipelines is e.evaluate_pipelines\n"
        "print('ok')\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
