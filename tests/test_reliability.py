"""Issue 12: bad input is one line and exit 2 with nothing of the user's lost; one run per output_dir;
a damaged latest checkpoint falls back; --overwrite_output_dir removes only what our runs wrote."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_training import TINY_UNET, fast_args, make_tiny_teacher

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.diffusion.run import run_redistill, run_teacher, script_main
from redistill_diffusion.training import checkpointing as ckpt

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".redistill")
    }


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A user's folder: notes, a file where a folder is expected, broken configs, a broken classifier."""
    from redistill_diffusion.classification.hub import save_classifier
    from redistill_diffusion.classification.students import create_teacher

    root = tmp_path_factory.mktemp("user")
    (root / "notes.txt").write_text("my notes\n")
    (root / "afile").write_text("not a folder\n")
    (root / "bad_config.json").write_text("{not json")
    (root / "bad_recipe.yaml").write_text("train_batch_size: [unclosed\n")
    teacher = make_tiny_teacher(root / "teacher")
    broken = make_tiny_teacher(root / "teacher_bad_config")
    (broken / "unet" / "config.json").write_text("{'single': 'quotes'}")
    classifier = root / "classifier"
    save_classifier(create_teacher("resnet18", num_classes=4, cifar_stem=True), classifier)
    _truncate(classifier / "model.safetensors")
    assert teacher.is_dir()
    return root


def _teacher_flags(root: Path, out: str) -> list[str]:
    return fast_args(root / out, steps=1)[2:] + ["--dataset_name", "redistill:shapes"]


# (name, entry point, argv(root), words the one line must contain)
BAD_INPUTS = [
    (
        "output_dir is a file",
        "teacher",
        lambda r: (
            _teacher_flags(r, "x")
            + ["--model_config_name_or_path", "tiny-ddpm-32", "--output_dir", str(r / "afile")]
        ),
        "is a file",
    ),
    (
        "output_dir under a file",
        "teacher",
        lambda r: (
            _teacher_flags(r, "x")
            + ["--model_config_name_or_path", "tiny-ddpm-32", "--output_dir", str(r / "afile" / "out")]
        ),
        "afile",
    ),
    (
        "teacher config not JSON",
        "teacher",
        lambda r: _teacher_flags(r, "out_cfg") + ["--model_config_name_or_path", str(r / "bad_config.json")],
        "bad_config.json",
    ),
    (
        "malformed YAML recipe",
        "teacher",
        lambda r: ["--recipe", str(r / "bad_recipe.yaml"), "--output_dir", str(r / "out_yaml")],
        "not valid YAML",
    ),
    (
        "malformed YAML recipe (redistill train ddpm)",
        "cli",
        lambda r: [
            "train",
            "ddpm",
            "--recipe",
            str(r / "bad_recipe.yaml"),
            "--output_dir",
            str(r / "out_yaml"),
        ],
        "not valid YAML",
    ),
    (
        "negative learning rate in scientific notation",
        "redistill",
        lambda r: (
            _teacher_flags(r, "out_lr")
            + ["--teacher_model_name_or_path", str(r / "teacher"), "--learning_rate", "-1e-3"]
        ),
        "--learning_rate must be positive",
    ),
    (
        "unknown flag",
        "redistill",
        lambda r: (
            _teacher_flags(r, "out_flag")
            + ["--teacher_model_name_or_path", str(r / "teacher"), "--nope", "1"]
        ),
        "--nope",
    ),
    (
        "teacher unet/config.json not JSON",
        "redistill",
        lambda r: (
            _teacher_flags(r, "out_bad_teacher")
            + ["--teacher_model_name_or_path", str(r / "teacher_bad_config")]
        ),
        "config.json",
    ),
    (
        "truncated classifier weights",
        "classifier",
        lambda r: [
            "--teacher_model_name_or_path",
            str(r / "classifier"),
            "--dataset_name",
            "redistill:shapes",
            "--builtin_num_images",
            "16",
            "--resolution",
            "32",
            "--cifar_stem",
            "--output_dir",
            str(r / "out_cls"),
            "--logger",
            "none",
            "--use_ema",
            "false",
            "--max_train_steps",
            "1",
        ],
        "model.safetensors",
    ),
    (
        "memory --json under a file",
        "cli",
        lambda r: ["memory", "tiny-ddpm-32", "--json", str(r / "afile" / "x.json")],
        "afile",
    ),
    (
        "resume from a checkpoint that does not exist",
        "redistill",
        lambda r: (
            _teacher_flags(r, "out_resume")
            + ["--teacher_model_name_or_path", str(r / "teacher"), "--resume_from_checkpoint", "checkpoint-7"]
        ),
        "checkpoint-7",
    ),
]


def _entry(kind: str):
    from redistill_diffusion.classification.run import run_classifier

    runs = {"teacher": run_teacher, "redistill": run_redistill, "classifier": run_classifier}
    if kind == "cli":
        return cli_main
    return lambda argv: script_main(runs[kind], argv)


@pytest.mark.parametrize("name, kind, argv, words", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_lost(user_folder, capfd, name, kind, argv, words):
    before = _snapshot(user_folder)
    capfd.readouterr()
    code = _entry(kind)(argv(user_folder))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, f"{name}: expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err and words in lines[0], lines[0]
    after = _snapshot(user_folder)
    assert {k: v for k, v in after.items() if k in before} == before, f"{name} changed or removed a user file"


def test_example_script_reports_os_errors_in_one_line(tmp_path):
    """The real script process (not just script_main): an output_dir on a path that cannot be created."""
    blocker = tmp_path / "afile"
    blocker.write_text("keep me\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train_ddpm_teacher.py"),
            "--model_config_name_or_path",
            "tiny-ddpm-32",
            "--dataset_name",
            "redistill:shapes",
            "--output_dir",
            str(blocker / "out"),
            "--logger",
            "none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1 and "afile" in lines[0], process.stderr
    assert blocker.read_text() == "keep me\n"


def test_failed_push_keeps_the_model_and_says_so(tmp_path, capfd):
    class FailingHub:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, **kwargs):
            raise ConnectionError("Hub unreachable")  # requests' errors are OSErrors too

    out = tmp_path / "pushed"
    argv = fast_args(out, steps=1)[2:] + [
        "--dataset_name",
        "redistill:shapes",
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--push_to_hub",
        "--hub_model_id",
        "me/model",
    ]
    capfd.readouterr()
    code = script_main(lambda a: run_teacher(a, hub_api=FailingHub()), argv)
    err = capfd.readouterr().err
    last = err.splitlines()[-1]  # after the progress bar of the training that did finish
    assert code == 2 and "Traceback" not in err and last.startswith("error: ") and "push_to_hub" in last
    assert str(out) in last  # where the trained model is
    assert (out / "model_index.json").is_file()


def test_api_rejects_bad_arguments_in_one_line():
    from diffusers import UNet2DModel

    from redistill_diffusion.diffusion.model import ReDistillUNet2DModel
    from redistill_diffusion.memory import measure_peak_memory

    teacher = UNet2DModel(**TINY_UNET)  # 3 levels: total stride 4
    with pytest.raises(ValueError, match="multiples of 4"):
        measure_peak_memory(teacher, (3, 30, 30))
    with pytest.raises(ValueError, match="nn.Module"):
        measure_peak_memory(None, (3, 16, 16))
    with pytest.raises(ValueError, match="stem_stride"):
        ReDistillUNet2DModel.from_teacher(teacher, stem_stride=True)


def test_corrupt_image_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from redistill_diffusion.data import load_image_dataset

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"ok_{i}.png")
    (folder / "broken.png").write_bytes((folder / "ok_1.png").read_bytes()[:30])  # truncated PNG
    with caplog.at_level(logging.WARNING, logger="redistill_diffusion"):
        dataset = load_image_dataset(train_data_dir=str(folder))
    assert len(dataset) == 4
    assert "Skipping 1 of 5 images" in caplog.text and "broken.png" in caplog.text


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Path:
    """A 4-step teacher run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run_teacher(
        fast_args(out, steps=4)[2:]
        + [
            "--dataset_name",
            "redistill:shapes",
            "--model_config_name_or_path",
            "tiny-ddpm-32",
            "--builtin_num_images",
            "16",
            "--checkpointing_steps",
            "2",
            "--use_ema",
            "false",
        ]
    )
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    return out


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: _truncate(next(p for p in c.rglob("*.safetensors") if p.parent != c)), "safetensors"),
        (lambda c: (c / "optimizer.bin").write_bytes(b"garbage"), "optimizer.bin"),
        (lambda c: (c / ckpt.STATE_FILE).write_text("{garbage"), ckpt.STATE_FILE),
    ],
    ids=["truncated-weights", "garbage-optimizer", "garbage-state"],
)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    checkpointed_run, tmp_path, caplog, capfd, damage, named
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(checkpointed_run, out)
    damage(out / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="redistill_diffusion"):
        path = ckpt.resolve_resume_path(str(out), "latest")
    assert path == out / "checkpoint-2"
    assert "checkpoint-4" in caplog.text and named in caplog.text

    # Named explicitly, the damaged checkpoint is a one-line error naming the file.
    argv = fast_args(out, steps=4)[2:] + [
        "--dataset_name",
        "redistill:shapes",
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--builtin_num_images",
        "16",
        "--use_ema",
        "false",
        "--resume_from_checkpoint",
        "checkpoint-4",
    ]
    capfd.readouterr()
    assert script_main(run_teacher, argv) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and named in err[0] and "checkpoint-4" in err[0]

    # 'latest' resumes from checkpoint-2 and trains on to step 4.
    result = run_teacher(argv[:-1] + ["latest"])
    assert result.resumed_from == str(out / "checkpoint-2") and result.global_step == 4


def test_unreadable_random_states_warn(checkpointed_run, tmp_path, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(checkpointed_run, out)
    (out / "checkpoint-4" / "random_states_0.pkl").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="redistill_diffusion"):
        assert ckpt.resolve_resume_path(str(out), "latest") == out / "checkpoint-4"
    assert any(r.levelname == "WARNING" and "random_states_0.pkl" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- output_dir
def test_overwrite_removes_only_what_our_run_wrote(checkpointed_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(checkpointed_run, out)
    old_samples = sorted(p.name for p in (out / "samples").iterdir())
    assert old_samples, "the old run wrote sample grids"
    (out / "checkpoint-my-notes").mkdir()
    (out / "checkpoint-my-notes" / "notes.txt").write_text("mine")
    (out / "samples" / "my_drawing.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    ckpt_like = out / "checkpoint-9"  # looks like ours, but has no completion marker
    ckpt_like.mkdir()
    (ckpt_like / "data.txt").write_text("mine")

    run_teacher(
        fast_args(out, steps=1)[2:]
        + [
            "--dataset_name",
            "redistill:shapes",
            "--model_config_name_or_path",
            "tiny-ddpm-32",
            "--builtin_num_images",
            "16",
            "--use_ema",
            "false",
            "--overwrite_output_dir",
            "--validation_steps",
            "0",
        ]
    )
    assert (out / "checkpoint-my-notes" / "notes.txt").read_text() == "mine"
    assert (out / "notes.txt").read_text() == "mine" and (ckpt_like / "data.txt").read_text() == "mine"
    assert (out / "samples" / "my_drawing.png").read_bytes() == b"mine"
    assert not (out / "checkpoint-2").exists() and not (out / "checkpoint-4").exists()
    new_samples = {p.name for p in (out / "samples").iterdir()} - {"my_drawing.png"}
    recorded = json.loads((out / ".redistill_outputs.json").read_text())["files"]
    assert all(f"samples/{name}" in recorded for name in new_samples)
    assert "step_0000004.png" in old_samples and "step_0000004.png" not in new_samples  # no stale grids


_HOLD_LOCK = """
import sys, time
from redistill_diffusion.training.outputs import lock_output_dir
lock = lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_into_the_same_output_dir_is_refused(tmp_path):
    """Two processes, one output_dir: the one that finds the lock taken stops in one line, and the
    first one's files are untouched. The lock dies with its process: a killed run leaves none."""
    out = tmp_path / "shared"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (out / "checkpoint-3.tmp").mkdir()  # the first run's save in progress
        second = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "train_ddpm_teacher.py"),
                "--model_config_name_or_path",
                "tiny-ddpm-32",
                "--dataset_name",
                "redistill:shapes",
                "--output_dir",
                str(out),
                "--logger",
                "none",
                "--max_train_steps",
                "1",
                "--checkpointing_steps",
                "1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1 and "in use by another run" in lines[0], (
            second.stderr
        )
        assert (out / "checkpoint-3.tmp").is_dir()  # not cleaned away by the refused run
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    from redistill_diffusion.training.outputs import lock_output_dir

    while True:  # the killed holder's lock is gone: a new run may take it
        try:
            lock_output_dir(out).release()
            break
        except ValueError:
            assert time.time() < deadline
            time.sleep(0.1)


def test_two_runs_started_at_once_one_is_refused(tmp_path):
    out = tmp_path / "race"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(REPO / "examples" / "train_ddpm_teacher.py"),
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--dataset_name",
        "redistill:shapes",
        "--builtin_num_images",
        "16",
        "--output_dir",
        str(out),
        "--logger",
        "none",
        "--max_train_steps",
        "3",
        "--checkpointing_steps",
        "1",
        "--train_batch_size",
        "4",
        "--ddpm_num_inference_steps",
        "2",
        "--eval_batch_size",
        "1",
        "--sample_scheduler",
        "ddim",
        "--measure_memory",
        "false",
        "--lr_warmup_steps",
        "1",
    ]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = [line for line in refused.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in refused, refused
    assert (out / "model_index.json").is_file()  # the winner finished
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
