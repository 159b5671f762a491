"""Model cards in the Hub's conventions: metadata from training, metrics from `redistill eval --update_card`."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher
from huggingface_hub import ModelCard
from test_pipelines import SECRET, LocalHub

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.diffusion.run import run_redistill
from redistill_diffusion.hub import push_folder_to_hub
from redistill_diffusion.model_cards import training_command, update_model_card

EXTRACTOR = "timm:test_resnet"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    teacher = make_tiny_teacher(root / "teacher")
    out = root / "student"
    args = fast_args(out, steps=2) + ["--teacher_model_name_or_path", str(teacher), "--distiller", "red"]
    args[args.index("--measure_memory") + 1] = "true"
    run_redistill(args)
    return root, out


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    """A tiny timm extractor's weights and a reference parquet of 8 images (all offline)."""
    import timm
    from datasets import Dataset
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("eval_inputs")
    torch.manual_seed(0)
    save_file(
        timm.create_model("test_resnet", num_classes=10).state_dict(), str(root / "extractor.safetensors")
    )
    images = (torch.rand(8, 16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Dataset.from_dict({"image": [Image.fromarray(i.numpy()) for i in images]}).to_parquet(
        str(root / "ref.parquet")
    )
    return root


def _eval(folder, inputs, output, *extra) -> int:
    argv = [
        "eval", "--pipelines", str(folder), "--reference", str(inputs / "ref.parquet"), "--num_samples", "4",
        "--sampler", "ddim", "--num_inference_steps", "2", "--batch_size", "4", "--metrics", "fid", "kid",
        "--feature_extractor", EXTRACTOR, "--feature_extractor_weights_path", str(inputs / "extractor.safetensors"),
        "--cache_root", str(output / "cache"), "--output_dir", str(output), *extra,
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KID's subset size is lowered to the 4 samples, with a warning
        return cli_main(argv)


def test_training_card_has_hub_metadata_the_command_and_both_memory_conventions(trained):
    root, out = trained
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert {"redistill", "knowledge-distillation", "peak-memory"} <= set(card.data.tags)
    assert len(card.data.tags) == len(set(card.data.tags))
    assert "redistill train ddpm --dataset_name redistill:shapes" in card.text
    assert f"--teacher_model_name_or_path {root / 'teacher'}" in card.text
    assert "| exact (every tensor alive" in card.text and "| paper (the ReDistill estimator)" in card.text
    assert "trust_remote_code=True" in card.text


def test_eval_update_card_writes_model_index_once_and_a_push_carries_it(trained, eval_inputs, tmp_path):
    _, out = trained
    assert _eval(out, eval_inputs, tmp_path / "eval1", "--update_card") == 0
    assert _eval(out, eval_inputs, tmp_path / "eval2", "--update_card") == 0  # replaces, does not duplicate
    card = ModelCard.load(str(out / "README.md"))
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"fd_test_resnet", "kd_test_resnet"} and len(card.data.eval_results) == 2
    fd = results["fd_test_resnet"]
    assert fd.task_type == "unconditional-image-generation" and fd.metric_value >= 0
    assert fd.metric_name == f"FD-test_resnet ({EXTRACTOR}, 4 samples, DDIM 2 steps)"
    assert card.text.count("## Evaluation (`redistill eval`)") == 1
    assert card.data.pipeline_tag == "unconditional-image-generation"  # training metadata kept

    hub = LocalHub(tmp_path / "hub")
    push_folder_to_hub(out, "me/tiny-redistill", api=hub)
    pushed = (tmp_path / "hub" / "me" / "tiny-redistill" / "README.md").read_text()
    assert "model-index:" in pushed and "fd_test_resnet" in pushed


def test_bad_input_is_one_line_exit_2_and_nothing_is_written(trained, eval_inputs, tmp_path, capsys):
    _, out = trained
    no_card = tmp_path / "no_card"
    import shutil

    shutil.copytree(out, no_card, ignore=shutil.ignore_patterns("README.md"))
    assert _eval(no_card, eval_inputs, tmp_path / "eval", "--update_card") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no model card" in err
    assert not (tmp_path / "eval").exists() and not (no_card / "README.md").exists()

    not_pipeline = tmp_path / "not_a_pipeline"
    not_pipeline.mkdir()
    (not_pipeline / "README.md").write_text("notes")
    with pytest.raises(ValueError, match="not a pipeline folder"):
        update_model_card(not_pipeline, {"fid": 1.0})
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(ValueError, match="not a pipeline folder"):
        push_folder_to_hub(not_pipeline, "me/x", api=hub)
    with pytest.raises(ValueError, match="malformed Hub repo id") as error:
        push_folder_to_hub(out, "me/bad repo", api=hub)
    assert "\n" not in str(error.value) and not hub.created and not hub.uploads
    assert (not_pipeline / "README.md").read_text() == "notes"


def test_training_with_a_malformed_repo_id_stops_before_training(tmp_path, capsys):
    teacher = make_tiny_teacher(tmp_path / "teacher")
    argv = [
        "train",
        "ddpm",
        *fast_args(tmp_path / "student", steps=2),
        "--teacher_model_name_or_path",
        str(teacher),
    ]
    argv += ["--push_to_hub", "--hub_model_id", "me/bad repo", "--hub_token", SECRET]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert "malformed Hub repo id" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert SECRET not in captured.out + captured.err
    assert not (tmp_path / "student" / "model_index.json").exists()


def test_training_command_never_carries_the_token():
    argv = ["--output_dir", "o", "--hub_token", SECRET, "--hub_token=" + SECRET, "--seed", "1"]
    assert training_command(argv, "redistill train ddpm") == "redistill train ddpm --output_dir o --seed 1"


def test_classification_card_in_timm_conventions_carries_metrics_as_model_index(tmp_path):
    from redistill_diffusion.classification import card_for, create_student, create_teacher, save_classifier

    teacher = create_teacher(
        "resnet18", num_classes=4, cifar_stem=True, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16)
    )
    student = create_student(teacher, stem_stride=4)
    card = card_for(
        student, distiller="red", dataset="cifar10 parquet", metrics={"top1": 0.5, "eval_loss": 1.2},
        memory={"exact": {"teacher_mb": 1.0, "student_mb": 0.25, "ratio": 4.0},
                "paper": {"teacher_mb": 0.5, "student_mb": 0.125, "ratio": 4.0}},
        command="redistill train classifier --seed 1",
    )  # fmt: skip
    folder = save_classifier(student, tmp_path / "student", model_card=card)
    parsed = ModelCard.load(str(folder / "README.md"))
    assert parsed.data.pipeline_tag == "image-classification"
    assert {"timm", "redistill", "knowledge-distillation", "peak-memory"} <= set(parsed.data.tags)
    [result] = parsed.data.eval_results
    assert (result.metric_type, result.metric_value, result.task_type) == (
        "top1",
        0.5,
        "image-classification",
    )
    assert "redistill train classifier --seed 1" in parsed.text and "exact: teacher 1.000 MB" in parsed.text


def test_held_out_denoising_loss_goes_into_the_model_index(trained):
    """`redistill eval --metrics denoise` keys (overall and bands) become model-index metrics; the per-timestep
    dictionary does not."""
    _, out = trained
    metrics = {
        "pipeline": str(out), "denoise_loss": 0.0362, "denoise_loss_low": 0.1, "denoise_loss_mid": 0.012,
        "denoise_loss_high": 0.0026, "denoise_loss_per_timestep": {"50": 0.19}, "num_samples": 4,
    }  # fmt: skip
    update_model_card(out, metrics)
    card = ModelCard.load(out / "README.md")
    types = {r.metric_type for r in card.data.eval_results}
    assert {"denoise_loss", "denoise_loss_low", "denoise_loss_mid", "denoise_loss_high"} <= types
    assert "denoise_loss_per_timestep" not in types
