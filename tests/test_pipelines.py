"""Final save: a DDPMPipeline folder that diffusers loads and samples, its model card, and the Hub push."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher

from redistill_diffusion.diffusion.configs import load_scheduler_config, load_unet_config
from redistill_diffusion.diffusion.pipeline_io import load_teacher
from redistill_diffusion.diffusion.run import run_redistill
from redistill_diffusion.hub import push_folder_to_hub

SECRET = "hf_do_not_print_this_token_123"

# Runs in a fresh interpreter where `import redistill_diffusion` fails, whatever PYTHONPATH says: the
# folder (or cached Hub repo) must bring its own code. Prints the sampled images' path.
BLOCKED_LOAD = """
import sys
sys.modules["redistill_diffusion"] = None
try:
    import redistill_diffusion
    raise SystemExit("redistill_diffusion is importable; the test would prove nothing")
except ImportError:
    pass
import numpy, torch
from diffusers import AutoModel, DiffusionPipeline
source, out = sys.argv[1], sys.argv[2]
try:
    DiffusionPipeline.from_pretrained(source)
    raise SystemExit("loaded custom code without trust_remote_code")
except ValueError as error:
    assert "trust_remote_code" in str(error), error
pipeline = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
assert type(pipeline.unet).__name__ == "ReDistillUNet2DModel" and len(pipeline.unet.red_blocks) == 2
assert not type(pipeline.unet).__module__.startswith("redistill_diffusion")
# A local unet folder loads alone via its config's auto_map (AutoModel reads a repo's model_index.json first).
unet = AutoModel.from_pretrained(source + "/unet", trust_remote_code=True) if len(sys.argv) < 4 else None
assert unet is None or type(unet).__name__ == "ReDistillUNet2DModel"
pipeline.set_progress_bar_config(disable=True)
images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="np").images
numpy.save(out, images)
"""


def _load_without_package(source: str, out: Path, env: dict | None = None, auto_model: bool = True):
    """Load + sample ``source`` in a subprocess that cannot import redistill_diffusion; the images."""
    import numpy as np

    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(out.parent / "modules"),
        **(env or {}),
    }
    argv = [sys.executable, "-c", BLOCKED_LOAD, source, str(out)] + ([] if auto_model else ["no-auto-model"])
    result = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=1200
    )  # a guard against hangs on a busy machine
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def _package_images(source: str):
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline

    pipeline = load_pipeline(source)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    return pipeline(batch_size=2, num_inference_steps=3, generator=generator, output_type="np").images


class LocalHub:
    """Stands in for huggingface_hub.HfApi: create_repo / upload_folder into a local directory,
    applying the ignore patterns with huggingface_hub's own filter."""

    def __init__(self, root: Path):
        self.root = root
        self.created: list[dict] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kwargs):
        self.created.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return repo_id

    def upload_folder(
        self, repo_id, folder_path, commit_message=None, ignore_patterns=None, repo_type=None, **kwargs
    ):
        from huggingface_hub.utils import filter_repo_objects

        folder = Path(folder_path)
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        kept = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        for relative in kept:
            target = self.root / repo_id / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / relative, target)
        self.uploads.append({"repo_id": repo_id, "files": kept, "commit_message": commit_message})
        return f"local://{repo_id}"

    def as_hub_cache(self, cache: Path, repo_id: str) -> Path:
        """Lay the repo out as huggingface_hub's cache does after a download (refs/main -> snapshot)."""
        commit = "0" * 40
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(self.root / repo_id, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        return cache


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    teacher = make_tiny_teacher(root / "teacher")
    out = root / "student"
    args = fast_args(out, steps=2) + [
        "--teacher_model_name_or_path",
        str(teacher),
        "--distiller",
        "red",
        "--measure_memory",
        "true",
        # the student designs beyond the paper travel in the component file too (loaded without the package)
        "--subpixel_skip",
        "true",
        "--refiner_channels",
        "4",
        "--stem",
        "space_to_depth",
        "--output_head",
        "pixel_shuffle",
    ]
    run_redistill(args)
    return teacher, out


def test_saved_student_loads_with_the_library_loader_and_samples(trained_student):
    from diffusers import DDPMPipeline

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline

    _, out = trained_student
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) or all("checkpoint-" in str(p) for p in out.rglob("*.bin"))
    pipeline = load_pipeline(out)
    assert isinstance(pipeline, DDPMPipeline)
    assert isinstance(pipeline.unet, ReDistillUNet2DModel) and len(pipeline.unet.red_blocks) == 2
    assert pipeline.unet.config.stem_stride == 2
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 3) and (images >= 0).all() and (images <= 1).all()


def test_model_card_names_teacher_method_stride_memory_and_grid(trained_student):
    teacher, out = trained_student
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "library_name: diffusers" in card
    assert str(teacher) in card and "**red**" in card and "stem stride | 2" in card
    assert "Peak activation memory" in card and "| exact (" in card and "| paper (" in card
    assert "![samples](samples/latest.png)" in card and (out / "samples" / "latest.png").is_file()
    assert "TODO" not in card
    assert (out / "memory_report.json").is_file() and (out / "memory_report.png").is_file()
    report = json.loads((out / "memory_report.json").read_text())
    assert set(report) == {"exact", "paper"} and all(v["ratio"] > 1.5 for v in report.values())


def test_saved_student_loads_without_the_package_and_samples_the_same_images(trained_student, tmp_path):
    import numpy as np

    from redistill_diffusion.diffusion.component_file import component_source

    _, out = trained_student
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["redistill_unet", "ReDistillUNet2DModel"]
    assert (out / "unet" / "redistill_unet.py").read_text() == component_source()
    assert json.loads((out / "unet" / "config.json").read_text())["auto_map"] == {
        "AutoModel": "redistill_unet.ReDistillUNet2DModel"
    }
    remote = _load_without_package(str(out), tmp_path / "images.npy")
    np.testing.assert_allclose(remote, _package_images(str(out)), atol=1e-6)


def test_teacher_loading_accepts_pipeline_and_unet_folders(trained_student, tmp_path):
    teacher, _ = trained_student
    unet, scheduler = load_teacher(str(teacher))
    assert scheduler is not None and unet.config.sample_size == 16
    unet_only, no_scheduler = load_teacher(str(teacher / "unet"))
    assert no_scheduler is None and unet_only.config == unet.config
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_teacher(str(tmp_path / "empty"))


def test_unet_and_scheduler_configs_resolve_from_shipped_names_ids_and_folders(tmp_path):
    assert load_unet_config("tiny-ddpm-32").model_kwargs()["block_out_channels"] == [32, 64, 64]
    assert "_class_name" not in load_unet_config("tiny-ddpm-32").model_kwargs()
    # A shipped Hub id brings its scheduler along offline (the paper's teacher is trained with 1000 linear steps).
    assert load_scheduler_config("google/ddpm-cifar10-32")["num_train_timesteps"] == 1000
    assert load_scheduler_config("tiny-ddpm-32") is not None
    assert load_scheduler_config(str(tmp_path)) is None
    teacher = make_tiny_teacher(tmp_path / "teacher")
    assert load_unet_config(str(teacher)).config["sample_size"] == 16  # a pipeline folder
    assert load_scheduler_config(str(teacher)) is not None
    with pytest.raises(FileNotFoundError, match="tiny-ddpm-32"):
        load_unet_config("no-such-config")


def test_push_to_hub_uploads_a_loadable_pipeline_without_leaking_the_token(tmp_path, capsys, caplog):
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline

    teacher = make_tiny_teacher(tmp_path / "teacher")
    hub = LocalHub(tmp_path / "hub")
    out = tmp_path / "student"
    args = fast_args(out, steps=2) + [
        "--teacher_model_name_or_path",
        str(teacher),
        "--distiller",
        "red",
        "--checkpointing_steps",
        "1",
        "--logger",
        "tensorboard",
        "--push_to_hub",
        "--hub_model_id",
        "me/tiny-redistill",
        "--hub_token",
        SECRET,
        "--hub_private_repo",
    ]
    caplog.set_level("DEBUG")
    run_redistill(args, hub_api=hub)

    assert hub.created[0] == {"repo_id": "me/tiny-redistill", "private": True, "exist_ok": True}
    uploaded = tmp_path / "hub" / "me" / "tiny-redistill"
    files = hub.uploads[-1]["files"]
    assert "README.md" in files and "model_index.json" in files and "samples/latest.png" in files
    assert not any(f.startswith(("checkpoint-", "logs/")) for f in files)
    assert "unet/redistill_unet.py" in files
    pipeline = load_pipeline(uploaded)
    assert type(pipeline.unet).__name__ == "ReDistillUNet2DModel"
    # The pushed repo, as a Hub download leaves it in the cache, loads by its id without the package.
    cache = hub.as_hub_cache(tmp_path / "hf_cache", "me/tiny-redistill")
    remote = _load_without_package(
        "me/tiny-redistill", tmp_path / "hub_images.npy", env={"HF_HUB_CACHE": str(cache)}, auto_model=False
    )
    assert remote.shape == (2, 16, 16, 3)
    import numpy as np

    np.testing.assert_allclose(remote, _package_images(str(uploaded)), atol=1e-6)
    assert "me/tiny-redistill" in (uploaded / "README.md").read_text()

    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"token written to {path}"


def test_push_folder_to_hub_creates_repo_first(tmp_path):
    folder = tmp_path / "folder"
    (folder / "checkpoint-5").mkdir(parents=True)
    (folder / "checkpoint-5" / "optimizer.bin").write_bytes(b"x")
    (folder / "README.md").write_text("card")
    (folder / "model_index.json").write_text("{}")
    hub = LocalHub(tmp_path / "hub")
    push_folder_to_hub(folder, "org/name", api=hub)
    assert hub.created and sorted(hub.uploads[0]["files"]) == ["README.md", "model_index.json"]


# ------------------------------------------------------------------ one Hub-id rule, one subfolder order


@pytest.mark.parametrize(
    "name, expected",
    [
        ("google/ddpm-cifar10-32", True),
        ("uoft-cs/cifar10", True),
        (
            "cifar10",
            True,
        ),  # bare names are Hub ids (datasets, legacy models); shipped names are checked first
        ("runs/cifar/student", False),  # more than one slash: a path
        ("./student", False),
        ("/abs/student", False),
        ("~/student", False),
        ("runs\\student", False),
        ("teacher/config.json", False),  # a file suffix: a path
        ("data/train.parquet", False),
        ("me/bad repo", False),  # huggingface_hub's own rules
        ("", False),
    ],
)
def test_is_hub_id(name, expected):
    from redistill_diffusion.hub import is_hub_id

    assert is_hub_id(name) is expected


def test_an_existing_local_folder_named_like_a_hub_id_is_a_path(tmp_path, monkeypatch):
    from redistill_diffusion.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("owner/name")
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert not is_hub_id("owner/name") and not is_hub_id(tmp_path / "owner" / "name")


def test_every_loader_takes_a_missing_nested_path_for_a_path_not_a_hub_id(tmp_path, monkeypatch):
    """'a/b/c' was a Hub id for some loaders and a path for others; now a missing path for all (no network)."""
    from redistill_diffusion.classification import load_classifier
    from redistill_diffusion.data import open_dataset
    from redistill_diffusion.diffusion.pipeline_io import check_pipeline_source

    monkeypatch.chdir(tmp_path)
    for load in (load_teacher, load_unet_config, open_dataset, load_classifier, check_pipeline_source):
        with pytest.raises(FileNotFoundError):
            load("runs/missing/student")


def test_teacher_and_config_loaders_pick_the_same_unet_of_a_folder(tmp_path):
    """A folder with a pipeline's unet/ and a stray root config.json: both loaders take unet/ (UNET_SUBFOLDERS)."""
    from redistill_diffusion.hub import UNET_SUBFOLDERS, local_unet_folder

    assert UNET_SUBFOLDERS[0] == "unet"
    teacher = make_tiny_teacher(tmp_path / "teacher")
    stray = json.loads((teacher / "unet" / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**stray, "sample_size": 8}))
    assert local_unet_folder(teacher) == teacher / "unet"
    unet, scheduler = load_teacher(str(teacher))
    assert unet.config.sample_size == 16 and scheduler is not None
    assert load_unet_config(str(teacher)).config["sample_size"] == 16


def test_one_grid_writer_for_pil_images_and_uint8_tensors(tmp_path):
    import numpy as np
    from PIL import Image

    from redistill_diffusion.evaluation import save_sample_grid

    images = (torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    from_tensor = np.array(Image.open(save_sample_grid(images, tmp_path / "t.png")))
    from_pil = np.array(Image.open(save_sample_grid(pil, tmp_path / "nested" / "p.png")))
    assert from_tensor.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)  # 5 images: 3 columns, 2 px padding
    np.testing.assert_array_equal(from_tensor, from_pil)
    with pytest.raises(ValueError, match="No images"):
        save_sample_grid([], tmp_path / "empty.png")
