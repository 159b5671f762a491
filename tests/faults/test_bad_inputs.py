"""Issue 24 items 8-10: bad input is refused in one line (exit 2, what was wrong, what to do) or warned
about in one line (what will really happen), never a traceback; a failed push keeps the trained model.

In-process where the entry point returns its exit status (`script_main`, `redistill_diffusion.cli.main`);
a subprocess only where the Hub must be reached through a local stand-in server. Progress bars of
`datasets` (loading the file the user named) are not error lines and are left out of the counts.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_training import TINY_UNET, fast_args
from PIL import Image

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.diffusion.run import run_redistill, run_teacher, script_main

REPO = Path(__file__).resolve().parents[2]
PROGRESS_BAR = re.compile(r"(\?|\d) ?(it|examples|ba|img)/s\]|\|\s*\d+/\d+ \[")


def _error_lines(stderr: str) -> list[str]:
    """stderr without blank lines and progress bars (splitlines also splits a bar's carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


def _assert_one_line(code: int, stderr: str, *words: str, exit_code: int = 2) -> str:
    lines = _error_lines(stderr)
    assert code == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _teacher_run(output_dir: Path, *extra: str, steps: int = 1, batch: int = 4, images: int = 8) -> list[str]:
    return fast_args(output_dir, steps=steps, batch=batch, images=images) + [
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--no_final_samples",
        *extra,
    ]


def _teacher_on(data: Path, output_dir: Path, *extra: str) -> list[str]:
    """A 1-step teacher run on a data file instead of the built-in shapes."""
    argv = _teacher_run(output_dir, *extra)
    argv[argv.index("redistill:shapes")] = str(data)
    return argv


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> Path:
    """Parquet files as users have them: HF-written with 0 rows, plain pyarrow (bytes / a nested struct, no
    HF metadata), classification labels with -1 and beyond the classes."""
    import datasets

    root = tmp_path_factory.mktemp("data")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).to_parquet(
        str(root / "empty.parquet")
    )
    pngs = [_png(30 * i) for i in range(8)]
    pq.write_table(pa.table({"image": pngs, "label": [0, 1] * 4}), root / "plain_bytes.parquet")
    pq.write_table(
        pa.table({"image": [{"bytes": b, "path": None} for b in pngs], "label": [0, 1] * 4}),
        root / "plain_struct.parquet",
    )
    pq.write_table(
        pa.table({"image": pngs, "label": [0, 1, 2, 3, 0, 1, -1, -1]}), root / "unlabelled.parquet"
    )
    pq.write_table(pa.table({"image": pngs, "label": list(range(8))}), root / "eight_classes.parquet")
    pq.write_table(pa.table({"pixels": list(range(8)), "label": [0] * 8}), root / "numbers.parquet")
    return root


# --------------------------------------------------------------------------- item 10: data sources
def test_parquet_with_zero_rows_is_one_line_naming_it(data_files, tmp_path, capfd):
    capfd.readouterr()
    code = script_main(run_teacher, _teacher_on(data_files / "empty.parquet", tmp_path / "out"))
    _assert_one_line(code, capfd.readouterr().err, "empty.parquet", "no rows")


@pytest.mark.parametrize("name", ["plain_bytes", "plain_struct"])
def test_plain_pyarrow_parquet_trains_and_scores(data_files, tmp_path, capfd, name):
    """Image bytes or a {bytes, path} struct without HF feature metadata: a TypeError before, images now."""
    from redistill_diffusion.evaluation.reference import load_reference

    capfd.readouterr()
    code = script_main(run_teacher, _teacher_on(data_files / f"{name}.parquet", tmp_path / "out"))
    err = capfd.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "out" / "model_index.json").is_file()
    reference = load_reference(str(data_files / f"{name}.parquet"))
    assert len(reference) == 8 and int(reference[1].float().mean()) == 30


def test_a_column_without_images_is_one_line_naming_it(data_files, tmp_path, capfd):
    capfd.readouterr()
    argv = _teacher_on(data_files / "numbers.parquet", tmp_path / "out", "--image_column", "pixels")
    _assert_one_line(script_main(run_teacher, argv), capfd.readouterr().err, "'pixels'", "--image_column")


# --------------------------------------------------------------------------- item 10: labels
def _classifier_argv(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name",
        str(data),
        "--model_name_or_path",
        "resnet18",
        "--distiller",
        "none",
        "--cifar_stem",
        "--resolution",
        "8",
        "--output_dir",
        str(output_dir),
        "--logger",
        "none",
        "--use_ema",
        "false",
        "--max_train_steps",
        "1",
        "--train_batch_size",
        "8",
        "--checkpointing_steps",
        "0",
        *extra,
    ]


@pytest.mark.parametrize(
    "data, extra, words",
    [
        ("unlabelled.parquet", (), ("label -1", "labelled split")),
        ("eight_classes.parquet", ("--num_classes", "4"), ("--num_classes 4", "--num_classes 8")),
    ],
    ids=["label -1", "labels past --num_classes"],
)
def test_bad_classification_labels_are_one_line(data_files, tmp_path, capfd, data, extra, words):
    from redistill_diffusion.classification.run import run_classifier

    capfd.readouterr()
    code = script_main(run_classifier, _classifier_argv(data_files / data, tmp_path / "out", *extra))
    _assert_one_line(code, capfd.readouterr().err, *words)


def test_eval_labels_past_the_model_classes_name_the_eval_data(data_files):
    from redistill_diffusion.classification.data import load_classification_data

    with pytest.raises(ValueError, match=r"--eval_data .*has label 7.*--num_classes 8"):
        load_classification_data(
            dataset_name=str(data_files / "plain_bytes.parquet"),
            eval_data=str(data_files / "eight_classes.parquet"),
            eval_split="train",
        )
    data = load_classification_data(  # --num_classes 8 covers them
        dataset_name=str(data_files / "plain_bytes.parquet"),
        eval_data=str(data_files / "eight_classes.parquet"),
        eval_split="train",
        model_num_classes=8,
    )
    assert data.num_classes == 2 and len(data.eval) == 8


# --------------------------------------------------------------------------- item 8: refusals
@pytest.mark.parametrize(
    "extra, words",
    [
        (("--resolution", "0"), ("--resolution", "got 0", "sample_size")),
        (("--checkpoints_total_limit", "0"), ("--checkpoints_total_limit", "leave it out")),
        (("--checkpoints_total_limit", "-1"), ("--checkpoints_total_limit", "got -1")),
        (("--max_train_samples", "0"), ("--max_train_samples", "at least 1")),
        (("--builtin_num_images", "0"), ("--builtin_num_images",)),
    ],
    ids=["resolution 0", "total limit 0", "total limit -1", "max_train_samples 0", "no built-in images"],
)
def test_settings_that_cannot_mean_anything_are_refused(tmp_path, capfd, extra, words):
    capfd.readouterr()
    code = script_main(run_teacher, _teacher_run(tmp_path / "out", *extra))
    _assert_one_line(code, capfd.readouterr().err, *words)
    assert not (tmp_path / "out" / "model_index.json").exists()


# --------------------------------------------------------------------------- item 8: warnings
@pytest.fixture(scope="module")
def tiny_data_run(tmp_path_factory):
    """One image, --max_train_samples 5, --train_batch_size 16, --mixed_precision fp16 on a CPU."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    argv = _teacher_run(out, "--max_train_samples", "5", "--mixed_precision", "fp16", batch=16, images=1)
    from accelerate.state import AcceleratorState

    handler = _Records()
    logging.getLogger("redistill_diffusion").addHandler(handler)
    # accelerate keeps one process-wide state whose precision cannot change: reset it around the fp16 run.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        result = run_teacher(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        logging.getLogger("redistill_diffusion").removeHandler(handler)
    return result, [r.getMessage() for r in handler.records if r.levelno == logging.WARNING]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    "words",
    [
        ("fewer than one batch", "--train_batch_size 16", "1 image"),
        ("--max_train_samples 5", "all 1"),
        ("--mixed_precision fp16", "fp32", "bf16"),
    ],
    ids=["one image, batch 16", "max_train_samples above the data", "fp16 on a CPU"],
)
def test_settings_that_do_something_else_warn_in_one_line(tiny_data_run, words):
    result, warnings = tiny_data_run
    assert result.global_step == 1  # the run goes on, as the warning says
    matching = [w for w in warnings if all(word in w for word in words)]
    assert len(matching) == 1 and "\n" not in matching[0], warnings


def test_resuming_with_another_batch_size_warns_what_changes(tmp_path, caplog):
    out = tmp_path / "run"
    checkpointed = _teacher_run(out, "--checkpointing_steps", "1", steps=2, batch=4)
    checkpointed[checkpointed.index("--checkpointing_steps") + 1] = "1"  # fast_args sets 0
    run_teacher(checkpointed)
    saved = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert saved["train_batch_size"] == 4 and saved["gradient_accumulation_steps"] == 1
    resumed = _teacher_run(
        out, "--resume_from_checkpoint", "latest", "--gradient_accumulation_steps", "2", steps=3, batch=2
    )
    with caplog.at_level(logging.WARNING, logger="redistill_diffusion"):
        result = run_teacher(resumed)
    assert result.global_step == 3 and result.resumed_from.endswith("checkpoint-2")
    warnings = [r.getMessage() for r in caplog.records if "Resuming checkpoint-2" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert (
        "--train_batch_size 4 -> 2" in warnings[0] and "--gradient_accumulation_steps 1 -> 2" in warnings[0]
    )
    assert "not bit-identical" in warnings[0]


def test_resume_warning_compares_processes_and_skips_old_checkpoints():
    from redistill_diffusion.training.run_checks import resume_mismatch_warning

    same = {"train_batch_size": 8, "gradient_accumulation_steps": 1, "num_processes": 2}
    assert resume_mismatch_warning("checkpoint-9", same, same) is None
    assert "processes 2 -> 1" in resume_mismatch_warning("checkpoint-9", same, {**same, "num_processes": 1})
    assert (
        resume_mismatch_warning("checkpoint-9", {"num_processes": 2}, {**same, "train_batch_size": 4}) is None
    )


def test_timm_stem_cut_at_a_tiny_input_warns_in_one_line(capfd):
    capfd.readouterr()
    assert cli_main(["memory", "--timm", "resnet18", "--resolution", "7"]) == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1.01x" in warnings[0] and "--resolution" in warnings[0], captured.err
    assert cli_main(["memory", "--timm", "resnet18", "--resolution", "32"]) == 0
    assert "warning:" not in capfd.readouterr().err


def test_classifier_training_at_an_input_no_larger_than_the_stem_warns(caplog):
    from redistill_diffusion.classification.run import ClassifierArguments, _warn_if_stem_cut_is_moot

    with caplog.at_level(logging.WARNING, logger="redistill_diffusion"):
        _warn_if_stem_cut_is_moot(ClassifierArguments(stem_stride=8), 8)
        _warn_if_stem_cut_is_moot(ClassifierArguments(strides="4-11221"), 32)
    assert len(caplog.records) == 1 and "--resolution 8" in caplog.records[0].getMessage()


# --------------------------------------------------------------------------- item 9: class-conditional
@pytest.fixture(scope="module")
def conditional_teacher(tmp_path_factory) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("conditional") / "teacher"
    unet = UNet2DModel(**TINY_UNET, num_class_embeds=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(folder))
    return folder


def test_class_conditional_teacher_is_refused_at_the_start(conditional_teacher, tmp_path, capfd):
    argv = fast_args(tmp_path / "out", steps=1) + ["--teacher_model_name_or_path", str(conditional_teacher)]
    capfd.readouterr()
    line = _assert_one_line(script_main(run_redistill, argv), capfd.readouterr().err, "class-conditional")
    assert "num_class_embeds 4" in line and "unconditional" in line
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_class_conditional_teacher_config_and_pipeline_are_refused(conditional_teacher, tmp_path, capfd):
    from redistill_diffusion.diffusion.sampling import sample_images

    capfd.readouterr()
    argv = _teacher_run(tmp_path / "out")
    argv[argv.index("tiny-ddpm-32")] = str(conditional_teacher / "unet" / "config.json")
    _assert_one_line(script_main(run_teacher, argv), capfd.readouterr().err, "class-conditional")
    with pytest.raises(ValueError, match="class-conditional"):
        sample_images(str(conditional_teacher), 1, num_inference_steps=1, progress=False)


def test_class_conditional_student_can_still_be_derived(conditional_teacher):
    """What the README still promises: deriving (and measuring) a class-conditional student works."""
    from diffusers import UNet2DModel

    from redistill_diffusion.diffusion.model import ReDistillUNet2DModel

    teacher = UNet2DModel.from_pretrained(str(conditional_teacher / "unet"))
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2)
    assert student.config.num_class_embeds == 4


# --------------------------------------------------------------------------- item 10: --push_to_hub
class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like the Hub to a refused token (401); with ``accept_create``, creating the repo works."""

    accept_create = False

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.accept_create and self.path.startswith("/api/repos/create"):
            body = json.dumps({"url": f"http://{self.headers['host']}/me/model", "name": "me/model"})
            code = 200
        else:
            body, code = json.dumps({"error": "Invalid credentials in Authorization header"}), 401
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(request):
    handler = type("Handler", (_FakeHub,), {"accept_create": getattr(request, "param", False)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed again when the probe goes


SECRET = "hf_NotARealTokenButSecret123"


def _push_run(endpoint: str, output_dir: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": SECRET,
        "OMP_NUM_THREADS": "1",
    }
    argv = _teacher_run(output_dir, "--push_to_hub", "--hub_model_id", "me/model")
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_ddpm_teacher.py"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "where, reason", [("no network", "cannot be reached"), ("bad token", "refused the token")]
)
def test_push_to_hub_that_cannot_start_is_one_line_before_training(fake_hub, tmp_path, where, reason):
    endpoint = _closed_port() if where == "no network" else fake_hub
    process = _push_run(endpoint, tmp_path / "out")
    line = _assert_one_line(process.returncode, process.stderr, "--push_to_hub", reason, "hf upload me/model")
    assert SECRET not in process.stderr + process.stdout
    assert "hf auth login" in line and not (tmp_path / "out" / "model_index.json").exists()


@pytest.mark.parametrize("fake_hub", [True], indirect=True)
def test_push_refused_at_the_end_keeps_the_model_and_says_how_to_upload(fake_hub, tmp_path):
    out = tmp_path / "out"
    process = _push_run(fake_hub, out)
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    errors = [line for line in _error_lines(process.stderr) if "error:" in line]
    assert len(errors) == 1 and "refused the token" in errors[0], process.stderr
    assert f"the model is saved in {out}" in errors[0] and f"hf upload me/model {out}" in errors[0]
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    assert SECRET not in process.stderr + process.stdout


# --------------------------------------------------------------------------- item 10: Ctrl-C
def _ctrl_c(*args, **kwargs):
    """A real Ctrl-C (SIGINT to this process) where the patched function was called."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the handler raises here at the latest
    raise AssertionError("SIGINT was not delivered")


@pytest.mark.parametrize("entry", ["script", "cli"])
def test_ctrl_c_while_loading_data_is_one_line(monkeypatch, tmp_path, capfd, entry):
    """Loading data happens under the run's signal handling (`interrupts.SignalGuard`): one line, 130."""
    import redistill_diffusion.data as data

    monkeypatch.setattr(data, "drop_unreadable_images", _ctrl_c)
    argv = _teacher_run(tmp_path / "out")
    capfd.readouterr()
    code = script_main(run_teacher, argv) if entry == "script" else cli_main(["train", "ddpm-teacher", *argv])
    _assert_one_line(code, capfd.readouterr().err, "interrupted by SIGINT", exit_code=130)


@pytest.mark.parametrize("entry", ["script", "memory"])
def test_ctrl_c_before_any_signal_handling_is_one_line(monkeypatch, tmp_path, capfd, entry):
    """Parsing flags or `redistill memory` run with Python's own SIGINT handler: KeyboardInterrupt, which
    every entry point turns into one line and exit 130 instead of a traceback."""
    import redistill_diffusion.diffusion.configs as configs
    import redistill_diffusion.diffusion.run as runs

    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a user's shell process has
    capfd.readouterr()
    if entry == "script":
        monkeypatch.setattr(runs, "parse_args", _ctrl_c)
        code = script_main(run_teacher, _teacher_run(tmp_path / "out"))
    else:
        monkeypatch.setattr(configs, "load_unet_config", _ctrl_c)
        code = cli_main(["memory", "tiny-ddpm-32"])
    _assert_one_line(code, capfd.readouterr().err, "interrupted by SIGINT (Ctrl-C)", exit_code=130)
    assert not (tmp_path / "out").exists()
