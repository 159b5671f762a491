"""The one training loop: every distiller trains, resume after SIGKILL is bit-exact, bad input stops early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher
from safetensors.torch import load_file

from redistill_diffusion.config import TrainingArguments
from redistill_diffusion.diffusion.run import run_redistill, run_teacher, script_main
from redistill_diffusion.training import NonFiniteLossError, TaskLosses, combine_losses
from redistill_diffusion.training import checkpointing as ckpt
from redistill_diffusion.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "pipeline")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


# --------------------------------------------------------------------------- losses
def test_combine_losses_weights_task_and_distillation():
    task = torch.tensor(2.0)
    total = combine_losses(task, {"red": torch.tensor(1.0), "output_mse": torch.tensor(3.0)}, 0.5)
    assert total.item() == pytest.approx(0.5 * 2.0 + 0.5 * 4.0)
    assert combine_losses(task, {}, 0.5).item() == 2.0  # no distillation term: the task loss alone
    with pytest.raises(ValueError, match="distill_weight"):
        combine_losses(task, {"red": task}, 1.5)


def test_task_weight_replaces_the_task_losss_weight_with_or_without_distillation():
    task = torch.tensor(2.0)
    assert combine_losses(task, {}, 0.5, task_weight=0.5).item() == pytest.approx(1.0)  # plain at 0.5 x CE
    total = combine_losses(task, {"kd": torch.tensor(4.0)}, 0.5, task_weight=0.3)
    assert total.item() == pytest.approx(0.3 * 2.0 + 0.5 * 4.0)
    # the default is unchanged: 1 - distill_weight with a distillation loss
    assert combine_losses(task, {"kd": torch.tensor(4.0)}, 0.25).item() == pytest.approx(0.75 * 2 + 0.25 * 4)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="task_weight"):
            combine_losses(task, {}, 0.5, task_weight=bad)


# --------------------------------------------------------------------------- every distiller trains
@pytest.mark.parametrize(
    "distiller", ["vanilla", "student_plus", "output_mse", "fitnet", "at", "red", "red+output_mse"]
)
def test_each_distiller_trains_a_few_steps(tmp_path, tiny_teacher, distiller):
    out = tmp_path / "run"
    teacher_before = _weights(tiny_teacher / "unet")
    result = run_redistill(
        fast_args(out, steps=2)
        + ["--teacher_model_name_or_path", str(tiny_teacher), "--distiller", distiller, "--use_ema", "false"]
    )
    assert result.global_step == 2
    logs = result.last_logs
    assert torch.isfinite(torch.tensor(logs["loss"])) and "loss/task" in logs
    named = [k for k in logs if k.startswith("loss/") and k != "loss/task"]
    if distiller in ("vanilla", "student_plus"):
        assert logs["loss"] == pytest.approx(logs["loss/task"])  # no distillation term
    else:
        assert named, f"{distiller} logged no named distillation loss: {logs}"
    # The saved student moved away from its teacher initialisation; the teacher did not move.
    student = _weights(out / "unet")
    teacher = _weights(tiny_teacher / "unet")
    assert any(
        not torch.equal(student[k], teacher[k])
        for k in student
        if k in teacher and student[k].shape == teacher[k].shape
    )
    assert all(torch.equal(teacher_before[k], teacher[k]) for k in teacher)
    has_red = any(k.startswith("red_blocks.") for k in student)
    assert has_red == (distiller in ("student_plus", "red", "red+output_mse"))
    assert (out / "model_index.json").is_file() and (out / "samples" / "latest.png").is_file()


def test_teacher_training_and_checkpoint_limit(tmp_path):
    out = tmp_path / "teacher"
    args = fast_args(out, steps=4) + [
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--resolution",
        "16",
        "--checkpointing_steps",
        "1",
        "--checkpoints_total_limit",
        "2",
    ]
    result = run_teacher(args)
    assert result.global_step == 4
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    assert (out / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "checkpoint-4" / "ema" / "ema_shadow_params.safetensors").is_file()
    assert not list(out.glob("*.tmp"))


def test_ema_also_averages_batchnorm_statistics(tmp_path, tiny_teacher):
    """The saved EMA student carries EMA-averaged RED BatchNorm statistics, not the raw model's."""
    out = tmp_path / "run"
    run_redistill(
        fast_args(out, steps=3)
        + [
            "--teacher_model_name_or_path",
            str(tiny_teacher),
            "--distiller",
            "red",
            "--red_norm",
            "batch",  # the diffusion default is GroupNorm, which keeps no running statistics
            "--checkpointing_steps",
            "3",
            "--use_ema",
            "--ema_warmup",
            "false",
            "--ema_max_decay",
            "0.5",
        ]
    )
    final, raw = _weights(out / "unet"), _weights(out / "checkpoint-3" / "student")
    ema_buffers = load_file(str(out / "checkpoint-3" / "ema" / "ema_buffers.safetensors"))
    stats = [k for k in final if k.startswith("red_blocks.") and k.endswith(("running_mean", "running_var"))]
    assert stats and set(stats) <= set(ema_buffers)
    assert all(torch.equal(final[k], ema_buffers[k]) for k in stats)
    assert any(not torch.equal(final[k], raw[k]) for k in stats)


# --------------------------------------------------------------------------- resume after SIGKILL
_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from redistill_diffusion.training import checkpointing
    from redistill_diffusion.diffusion.run import run_redistill

    commit = checkpointing.commit_checkpoint
    def hang_before_second_commit(tmp_dir, final_dir):
        if final_dir.name == "checkpoint-6":  # fully written to checkpoint-6.tmp, never renamed
            Path(sys.argv[1]).write_text("ready")
            time.sleep(600)
        return commit(tmp_dir, final_dir)
    checkpointing.commit_checkpoint = hang_before_second_commit
    run_redistill(sys.argv[2:])
    """
)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_teacher):
    # 40 images / batch 8 = 5 batches per epoch: checkpoint-3 is mid-epoch, the run spans 2 epochs.
    def args(out):
        return fast_args(out, steps=10, images=40) + [
            "--teacher_model_name_or_path",
            str(tiny_teacher),
            "--distiller",
            "red+output_mse",
            "--red_norm",
            "batch",  # BatchNorm RED blocks: their running statistics must resume exactly too
            "--checkpointing_steps",
            "3",
            "--random_flip",
            "--use_ema",
            "--ema_warmup",
            "false",
            "--ema_max_decay",
            "0.9",
        ]

    reference = tmp_path / "uninterrupted"
    run_redistill(args(reference))

    killed = tmp_path / "killed"
    ready = tmp_path / "ready"
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(ready), *args(killed)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while not ready.exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the killed run never reached its second checkpoint"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    # The kill hit during a save: the half-done checkpoint is invisible to 'latest'.
    assert (killed / "checkpoint-6.tmp").is_dir() and not (killed / "checkpoint-6").exists()
    assert ckpt.find_latest_checkpoint(killed) == killed / "checkpoint-3"
    assert not (killed / "model_index.json").exists()

    result = run_redistill(args(killed) + ["--resume_from_checkpoint", "latest"])
    assert result.resumed_from == str(killed / "checkpoint-3") and result.global_step == 10
    assert not (killed / "checkpoint-6.tmp").exists()  # stale temporaries are cleaned by the next save
    for sub in ("unet", "checkpoint-9/student"):  # final EMA weights, and the raw weights at step 9
        expected, got = _weights(reference / sub), _weights(killed / sub)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"{sub} differs after resume"
    for name in ("ema_shadow_params.safetensors", "ema_buffers.safetensors"):
        ema_expected = load_file(str(reference / "checkpoint-9" / "ema" / name))
        ema_got = load_file(str(killed / "checkpoint-9" / "ema" / name))
        assert all(torch.equal(ema_expected[k], ema_got[k]) for k in ema_expected), f"{name} differs"


def test_resume_with_accumulation_and_a_trainable_distiller(tmp_path, tiny_teacher):
    """FitNet regressors (a second prepared module, saved by accelerate) and gradient accumulation
    (checkpoint mid-epoch in micro-batches) resume exactly too."""
    import shutil

    def args(out):
        return fast_args(out, steps=6, batch=4, images=24) + [
            "--teacher_model_name_or_path",
            str(tiny_teacher),
            "--distiller",
            "fitnet",
            "--gradient_accumulation_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--use_ema",
        ]

    reference = tmp_path / "reference"
    run_redistill(args(reference))
    assert (reference / "checkpoint-2" / "model.safetensors").is_file()  # the regressors
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(reference / "checkpoint-2", resumed / "checkpoint-2")
    result = run_redistill(args(resumed) + ["--resume_from_checkpoint", "latest"])
    assert result.resumed_from.endswith("checkpoint-2") and result.global_step == 6
    for sub in ("unet", "checkpoint-6/student"):
        expected, got = _weights(reference / sub), _weights(resumed / sub)
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"{sub} differs after resume"
    regressors_expected = load_file(str(reference / "checkpoint-6" / "model.safetensors"))
    regressors_got = load_file(str(resumed / "checkpoint-6" / "model.safetensors"))
    assert all(torch.equal(regressors_expected[k], regressors_got[k]) for k in regressors_expected)


# --------------------------------------------------------------------------- bad input
def test_schedule_flags_override_a_configs_scheduler_and_must_agree_with_a_teachers(tmp_path, tiny_teacher):
    """--prediction_type & co. used to be dropped silently whenever the model brought a scheduler."""
    import json

    def teacher(out, *extra):
        run_teacher(
            fast_args(out, steps=1)
            + ["--model_config_name_or_path", "tiny-ddpm-32", "--resolution", "16", *extra]
        )
        return json.loads((out / "scheduler" / "scheduler_config.json").read_text())

    assert teacher(tmp_path / "eps")["prediction_type"] == "epsilon"  # the config's, flags unset
    v = teacher(tmp_path / "v", "--prediction_type", "v_prediction", "--ddpm_num_steps", "500")
    assert (v["prediction_type"], v["num_train_timesteps"]) == ("v_prediction", 500)
    assert v["beta_schedule"] == "linear"  # the config's value where no flag overrides it

    out = tmp_path / "student"
    with pytest.raises(
        ValueError, match=r"--prediction_type v_prediction \(the teacher's: epsilon\).*drop the flag"
    ):
        run_redistill(
            fast_args(out, steps=1)
            + ["--teacher_model_name_or_path", str(tiny_teacher), "--prediction_type", "v_prediction"]
        )
    assert not any(out.glob("checkpoint-*"))
    # the teacher's own value is no clash
    result = run_redistill(
        fast_args(out, steps=1)
        + ["--teacher_model_name_or_path", str(tiny_teacher), "--prediction_type", "epsilon"]
    )
    assert result.global_step == 1


def test_bad_inputs_stop_before_training(tmp_path, tiny_teacher):
    base = fast_args(tmp_path / "out", steps=1)
    with pytest.raises(FileNotFoundError, match="Teacher"):
        run_redistill(base + ["--teacher_model_name_or_path", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="stride-8 student"):
        run_redistill(base + ["--teacher_model_name_or_path", str(tiny_teacher), "--stem_stride", "8"])
    with pytest.raises(ValueError, match="--max_train_samples must be at least 1"):
        run_redistill(base + ["--teacher_model_name_or_path", str(tiny_teacher), "--max_train_samples", "0"])
    import datasets

    table = tmp_path / "labels_only.parquet"
    datasets.Dataset.from_dict({"label": [0, 1], "caption": ["a", "b"]}).to_parquet(str(table))
    with pytest.raises(ValueError, match="image column"):
        run_redistill(
            fast_args(tmp_path / "out2", steps=1)[2:]
            + ["--dataset_name", str(table), "--teacher_model_name_or_path", str(tiny_teacher)]
        )
    with pytest.raises(ValueError, match="Unknown distiller"):
        run_redistill(base + ["--teacher_model_name_or_path", str(tiny_teacher), "--distiller", "nope"])
    assert not any((tmp_path / "out").glob("checkpoint-*"))

    # An output_dir holding another run's files.
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        run_redistill(fast_args(other, steps=1) + ["--teacher_model_name_or_path", str(tiny_teacher)])


class _NaNTask:
    main_module_name = "model"

    def __init__(self):
        self.model = torch.nn.Linear(2, 1)

    def trainable_modules(self):
        return {"model": self.model}

    def train_dataset(self):
        return [{"x": torch.ones(2)} for _ in range(4)]

    def compute_losses(self, batch, ctx):
        out = ctx.modules["model"](batch["x"]).sum()
        return TaskLosses(task=out * float("nan"), distillation={"red": out.abs()})

    def save_final(self, output_dir, ctx):
        raise AssertionError("must not be reached")


def test_nan_loss_stops_with_a_one_line_fix(tmp_path):
    trainer = Trainer(
        TrainingArguments(
            output_dir=str(tmp_path / "nan"), logger="none", train_batch_size=2, max_train_steps=2
        )
    )
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train(_NaNTask())
    message = str(error.value)
    assert "\n" not in message and "task" in message and "--learning_rate" in message


def test_script_main_prints_one_line_and_exits_2(capsys):
    def bad_run(argv):
        raise ValueError("Pass --teacher_model_name_or_path.")

    assert script_main(bad_run, []) == 2
    assert capsys.readouterr().err.strip() == "error: Pass --teacher_model_name_or_path."


def test_checkpoint_discovery_ignores_partial_folders(tmp_path):
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / ckpt.STATE_FILE).write_text(f'{{"global_step": {step}}}')
    (tmp_path / "checkpoint-12.tmp").mkdir()  # killed during a save
    (tmp_path / "checkpoint-11").mkdir()  # no completion marker
    assert ckpt.find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert ckpt.resolve_resume_path(str(tmp_path), "checkpoint-2") == tmp_path / "checkpoint-2"
    with pytest.raises(FileNotFoundError, match="latest"):
        ckpt.resolve_resume_path(str(tmp_path), "checkpoint-11")
    assert ckpt.resolve_resume_path(str(tmp_path / "fresh"), "latest") is None


def test_memory_report_measures_a_copy_free_of_autocast_wrappers(tiny_teacher):
    """Under --mixed_precision accelerate wraps forward in autocast; the card must not count its casts."""
    from diffusers import UNet2DModel

    from redistill_diffusion.diffusion.task import _clean_copy
    from redistill_diffusion.memory import measure_peak_memory

    unet = UNet2DModel.from_pretrained(str(tiny_teacher / "unet"))
    shape = (3, 16, 16)
    clean_bytes = measure_peak_memory(unet, shape).peak_bytes
    unet.forward = torch.autocast("cpu", dtype=torch.bfloat16)(unet.forward)
    assert measure_peak_memory(unet, shape).peak_bytes != clean_bytes  # what the wrapper would report
    assert measure_peak_memory(_clean_copy(unet), shape).peak_bytes == clean_bytes


def test_heldout_denoising_loss_is_logged_and_matches_the_eval_api(tmp_path, tiny_teacher):
    """--heldout_data: the final evaluation logs the held-out denoising loss of the saved (EMA) weights, the
    same number `denoising_loss` gives for the saved pipeline; --teacher_mode train and red_norm group run."""
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline
    from redistill_diffusion.evaluation.denoising import denoising_loss, load_heldout_images

    heldout = tmp_path / "heldout.parquet"
    _shapes_parquet(heldout, 12)
    out = tmp_path / "run"
    result = run_redistill(
        fast_args(out, steps=2)
        + ["--teacher_model_name_or_path", str(tiny_teacher), "--distiller", "red", "--red_norm", "group"]
        + ["--teacher_mode", "train", "--heldout_data", str(heldout), "--heldout_num_images", "8"]
        + ["--heldout_timesteps", "3", "--use_ema", "false"]
    )
    assert {"denoise_loss", "denoise_loss_low", "denoise_loss_mid", "denoise_loss_high"} <= set(
        result.metrics
    )
    pipeline = load_pipeline(out)
    assert pipeline.unet.config.red_norm == "group"
    images = load_heldout_images(str(heldout), 16, 3, 8)
    again = denoising_loss(pipeline.unet.eval(), pipeline.scheduler, images, num_timesteps=3)
    assert again["denoise_loss"] == pytest.approx(result.metrics["denoise_loss"], abs=1e-5)


def _shapes_parquet(path: Path, count: int) -> None:
    import datasets
    from PIL import Image

    from redistill_diffusion.data import make_shapes

    images, labels = make_shapes(num_images=count, resolution=16, seed=1)
    rows = {"image": [Image.fromarray(a) for a in images], "label": [int(x) for x in labels]}
    datasets.Dataset.from_dict(rows).to_parquet(str(path))


# --------------------------------------------------------------------------- library mechanisms
class _RecordingTask:
    """A linear model on the indices 0..9; records each batch and one draw of ctx.generator."""

    main_module_name = "model"

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.seen: list[tuple[list[int], float]] = []

    def trainable_modules(self):
        return {"model": self.model}

    def train_dataset(self):
        return [torch.tensor([float(i)]) for i in range(10)]

    def compute_losses(self, batch, ctx):
        draw = torch.rand(1, generator=ctx.generator, device=ctx.device).item()
        self.seen.append(([int(x) for x in batch.flatten()], draw))
        return TaskLosses(task=(ctx.modules["model"](batch) ** 2).mean())

    def save_final(self, output_dir, ctx):
        pass


def test_resume_in_a_later_epoch_replays_the_same_batches_and_noise(tmp_path):
    """accelerate's seedable sampler + skip_first_batches: a resume mid-way through epoch 1 (not only
    epoch 0, as the end-to-end tests) sees the batches and generator draws of the uninterrupted run."""

    def run(out, resume=None):
        args = TrainingArguments(
            output_dir=str(out),
            logger="none",
            train_batch_size=2,
            max_train_steps=9,
            checkpointing_steps=7,
            use_ema=False,
            resume_from_checkpoint=resume,
        )
        task = _RecordingTask()
        Trainer(args).train(task)
        return task.seen

    full = run(tmp_path / "run")
    assert len(full) == 9 and sorted(i for b, _ in full[:5] for i in b) == list(range(10))
    assert [b for b, _ in full[:4]] != [b for b, _ in full[5:9]]  # epoch 1 is shuffled anew
    resumed = run(tmp_path / "run", resume="checkpoint-7")  # 5 batches per epoch: epoch 1, batch 3
    assert resumed == full[7:]


def test_ema_follows_diffusers_schedule_and_averages_buffers():
    """`ModelEMA` (timm's ModelEmaV3) gives diffusers' EMAModel parameters, with and without warmup, and
    also averages float buffers (BatchNorm statistics), which diffusers' EMAModel leaves out."""
    from diffusers.training_utils import EMAModel

    from redistill_diffusion.training.ema import ModelEMA

    for warmup in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
        ours = ModelEMA(model, decay=0.9, use_warmup=warmup, inv_gamma=1.0, power=0.75)
        reference = EMAModel(model.parameters(), decay=0.9, use_ema_warmup=warmup, inv_gamma=1.0, power=0.75)
        buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
        for step in range(1, 8):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            model(torch.randn(4, 3))  # moves the running statistics
            reference.step(model.parameters())
            ours.update(model, step=step)
            decay = reference.cur_decay_value
            assert ours.get_decay(step) == pytest.approx(decay)
            for name, b in model.named_buffers():
                if b.is_floating_point():
                    buffers[name] = decay * buffers[name] + (1 - decay) * b
        for got, expected in zip(ours.module.parameters(), reference.shadow_params):
            torch.testing.assert_close(got, expected)
        ema_buffers = dict(ours.module.named_buffers())
        for name, expected in buffers.items():
            torch.testing.assert_close(ema_buffers[name], expected)


def test_push_to_hub_needs_the_task_hooks(tmp_path):
    """The trainer holds no Hub code: a task without create_hub_repo/push_to_hub cannot --push_to_hub,
    and says so in one line before any step."""
    out = str(tmp_path / "run")
    args = TrainingArguments(
        output_dir=out, logger="none", max_train_steps=1, push_to_hub=True, hub_model_id="me/x"
    )
    task = _RecordingTask()
    with pytest.raises(ValueError, match="cannot push to the Hub") as error:
        Trainer(args).train(task)
    assert "\n" not in str(error.value) and task.seen == []
