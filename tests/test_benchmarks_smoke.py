"""The benchmark harness's own logic (no training: CI runs `benchmarks/run.py --budget smoke` for that)."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import report  # noqa: E402
import run as bench_run  # noqa: E402
from bench_diffusion import training_seconds_per_step  # noqa: E402


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        bench_run.parse_args(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_smoke_budget_refuses_to_overwrite_committed_results(capsys):
    assert "must not overwrite" in _usage_error(["--budget", "smoke", "--output_dir", str(BENCH_DIR)], capsys)


def test_dry_run_is_only_for_the_paper_budget(capsys):
    assert "--dry_run applies to --budget paper only" in _usage_error(
        ["--budget", "cpu", "--dry_run"], capsys
    )


def test_paper_budget_without_gpus_refuses_before_any_work(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the paper budget would run")
    with pytest.raises(SystemExit, match="needs CUDA GPUs"):
        bench_run.parse_args(["--budget", "paper", "--output_dir", str(tmp_path)])
    assert not (tmp_path / "results").exists()


def test_paper_dry_run_lists_every_distiller_without_running(tmp_path):
    assert (
        bench_run.main(
            [
                "--budget",
                "paper",
                "--dry_run",
                "--only",
                "classification",
                "diffusion",
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    diffusion = json.loads((tmp_path / "results" / "diffusion.json").read_text())
    assert diffusion["status"] == "dry run"
    commands = [c["command"] for c in diffusion["commands"]]
    assert all(c["returncode"] is None for c in diffusion["commands"])
    assert any("--distiller red " in c and "ddpm_cifar10_redistill.yaml" in c for c in commands)
    assert commands[-1].startswith("redistill eval --recipe recipes/eval_fid_is.yaml")
    assert not list((tmp_path / "logs").glob("paper_*"))
    assert "accelerate launch examples/train_classifier_redistill.py" in (tmp_path / "RESULTS.md").read_text()


def test_smoke_budget_defaults_outside_the_repository(tmp_path):
    args = bench_run.parse_args(["--budget", "smoke"])
    assert Path(args.output_dir).resolve() != BENCH_DIR
    assert args.work_dir.startswith(args.output_dir)


def test_missing_eval_data_is_a_clear_error(tmp_path, capsys):
    assert "--eval_data" in _usage_error(
        ["--budget", "cpu", "--eval_data", str(tmp_path / "nope.parquet")], capsys
    )


def test_seconds_per_step_from_the_final_progress_line(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "Steps:  50%|#####     | 150/300 [01:00<01:00, 2.5it/s]\r"
        "Steps: 100%|##########| 300/300 [02:30<00:00, 2.0it/s, loss=0.1]\n"
        "Finished at step 300\n"
    )
    assert training_seconds_per_step(log) == pytest.approx(150 / 300)
    log.write_text("Steps:  50%|#####     | 150/300 [01:00<01:00, 2.5it/s]\n")
    assert training_seconds_per_step(log) is None


def test_stratified_slices_hold_out_the_last_rows_of_every_class(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    source = tmp_path / "data.parquet"
    labels = [0] * 5 + [1] * 5  # sorted by label, as the shared CIFAR-10 parquet is
    pq.write_table(pa.table({"label": labels, "index": list(range(10))}), source)
    train, val = common.stratified_slices(source, tmp_path / "work", validation_per_class=2)
    assert pq.read_table(train)["index"].to_pylist() == [0, 1, 2, 5, 6, 7]
    assert pq.read_table(val)["index"].to_pylist() == [3, 4, 8, 9]
    with pytest.raises(ValueError, match="too few"):
        common.stratified_slices(source, tmp_path / "work2", validation_per_class=5)


def test_report_merges_every_part_present(tmp_path):
    results = tmp_path / "results"
    common.write_json(
        results / "classification.json",
        common.part_result(
            "classification",
            "cpu",
            markdown="| model | top-1 |\n|---|---|\n| red | 50 |",
            summary="Classification: red wins.",
            commands=[
                {
                    "name": "teacher",
                    "command": "python x.py",
                    "wall_s": 1.0,
                    "returncode": 0,
                    "log": "logs/t.log",
                }
            ],
        ),
    )
    common.write_json(
        results / "diffusion.json",
        common.not_run("diffusion", "cpu", "examples/train_ddpm_redistill.py is not present"),
    )
    text = report.render(tmp_path).read_text()
    assert "| red | 50 |" in text
    assert "Classification: red wins." in text
    assert "**Status: not run.** examples/train_ddpm_redistill.py is not present" in text
    assert "Not run yet: no `results/memory.json`" in text
    assert "`python x.py`" in text
    assert json.loads((results / "classification.json").read_text())["machine"]["logical_cores"] >= 1


def test_report_links_plots_recorded_in_another_checkout_to_its_own_copy(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "plot.png").write_bytes(b"png")
    elsewhere = "/elsewhere/checkout/benchmarks/results/"
    plots = [{"path": elsewhere + "plot.png", "title": "here"}, {"path": elsewhere + "gone.png"}]
    common.write_json(tmp_path / "results" / "memory.json", common.part_result("memory", "cpu", plots=plots))
    text = report.render(tmp_path).read_text()
    assert "![here](results/plot.png)" in text
    assert f"![gone]({elsewhere}gone.png)" in text  # no copy here: the recorded path, not a broken guess


# -- classification protocol v2 (issue 11): the plan of runs and the paired rows, without training --------
def test_classification_cpu_budget_follows_protocol_v2():
    import bench_classification as cls

    spec = cls.BUDGETS["cpu"]
    variants = spec.variants()
    for regime in cls.REGIMES:
        chosen = [v for v in variants if v.regime == regime]
        assert {v.distiller for v in chosen} >= {
            "vanilla",
            "student_plus",
            "red",
            "kd",
            "fitnet",
            "at",
            "dkd",
            "red+kd",
        }
        assert len({v.seed for v in chosen}) >= 2
        # RED rows use the reference's small-data alpha unless the row says "alpha 1".
        for v in chosen:
            if v.distiller.startswith("red"):
                assert v.flags["red_alpha"] == (1.0 if "alpha 1" in v.label else cls.RED_ALPHA)
    assert any(v.flags.get("red_norm") == "group" for v in variants)  # issue 16
    assert all(spec.steps_of(v) == spec.teacher_steps for v in variants if v.regime == "scratch")
    with_blocks = ("red", "red+kd", "student_plus")  # the arms whose student carries RED blocks
    assert all(
        v.flags.get("red_init") == "identity"
        for v in variants
        if v.regime == "finetune" and v.distiller in with_blocks
    )
    assert len({v.key for v in variants}) == len(variants)
    # Regime (a)'s core arms run at every seed before any other arm, so a budget cut short still pairs them.
    core = variants[: 2 * cls.CORE_ARMS["scratch"]]
    assert all(v.regime == "scratch" for v in core) and {v.seed for v in core} == {0, 1}
    assert {v.distiller for v in core} == {"vanilla", "red", "red+kd", "kd"}
    # --seeds replaces both regimes' seeds.
    override = spec.variants((7,))
    assert {v.seed for v in override} == {7} and len(override) == len(variants) // 2


def test_classification_rows_pair_each_seed_with_vanilla():
    import bench_classification as cls

    spec = cls.BUDGETS["cpu"]

    def info(label, distiller, seed, top1, best):
        variant = cls.Variant(label, distiller, "scratch", seed=seed)
        return {
            "variant": variant,
            "results": {"metrics": {"top1": top1, "best_top1": best}, "seconds_per_step": 0.1},
        }

    runs = [
        info("vanilla", "vanilla", 0, 0.50, 0.51),
        info("vanilla", "vanilla", 1, 0.40, 0.40),
        info("red", "red", 0, 0.52, 0.52),
        info("red", "red", 1, 0.41, 0.45),
    ]
    teacher = {"results": {"metrics": {"top1": 0.6, "best_top1": 0.6}, "global_step": 1200}}
    rows = cls._rows(teacher, {r["variant"].key: r for r in runs}, spec, num_train=45000)
    red = next(r for r in rows if r["model"] == "red")
    assert red["top1_diff_per_seed"] == pytest.approx({0: 0.02, 1: 0.01})
    assert red["top1_diff_mean"] == pytest.approx(0.015)
    assert red["best_top1_diff_per_seed"] == pytest.approx({0: 0.01, 1: 0.05})
    assert red["top1_mean"] == pytest.approx(0.465)
    text = cls._markdown(
        rows, {**_classification_settings(spec), "seeds": {"scratch": [0, 1], "finetune": []}}
    )
    assert "+1.50 ± 0.71 (+2.00, +1.00)" in text and "teacher frozen in eval mode" in text
    assert "no gradient clipping" in text and "fine-tuning setting" not in text


def _classification_settings(spec):
    return {
        "architecture": spec.architecture,
        "timm_model_args": spec.timm_model_args,
        "stem_stride": spec.stem_stride,
        "train_batch_size": spec.train_batch_size,
        "teacher_steps": spec.teacher_steps,
        "scratch_steps": spec.teacher_steps,
        "finetune_steps": spec.finetune_steps,
        "train_images": 45000,
        "eval_data": "x.parquet",
        "mixed_precision": "bf16",
        "learning_rate": spec.learning_rate,
        "red_alpha": 50.0,
        "evaluations_per_run": 4,
        "note": spec.note,
    }


def test_classification_never_reuses_a_run_from_before_protocol_v2(tmp_path):
    import bench_classification as cls

    argv = ["python", "examples/train_classifier_redistill.py", "--distiller", "red"]
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "benchmark_run.json").write_text(json.dumps({"argv": argv[1:]}))
    assert cls._reusable(tmp_path, argv) is None
    (tmp_path / "benchmark_run.json").write_text(json.dumps({"argv": argv[1:], "protocol": cls.PROTOCOL}))
    assert cls._reusable(tmp_path, argv) is not None


def test_cuda_part_is_skipped_in_one_line_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the cuda part would run")
    assert bench_run.main(["--budget", "smoke", "--only", "cuda", "--output_dir", str(tmp_path)]) == 0
    cuda = json.loads((tmp_path / "results" / "cuda.json").read_text())
    assert (cuda["status"], cuda["reason"]) == ("skipped", "no CUDA GPU on this machine")
    assert "**Status: skipped.** no CUDA GPU on this machine" in (tmp_path / "RESULTS.md").read_text()


def test_diffusion_reuse_accepts_a_flag_only_when_the_saved_config_records_its_value(tmp_path):
    from bench_diffusion import _same_run

    saved = ["train.py", "--distiller", "red", "--seed", "0"]
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"red_norm": "batch"}))
    named = ["train.py", "--distiller", "red", "--red_norm", "batch", "--seed", "0"]
    assert _same_run(saved, saved, tmp_path)
    assert _same_run(saved, named, tmp_path)  # trained with the then-default, which its config records
    assert not _same_run(saved, [*named[:3], "--red_norm", "group", *named[5:]], tmp_path)
    assert not _same_run(saved, [*named, "--extra", "1"], tmp_path)  # a flag the config does not record
    assert not _same_run(
        saved, ["train.py", "--distiller", "red", "--red_norm", "batch", "--seed", "1"], tmp_path
    )
    assert not _same_run(None, named, tmp_path)


def test_parity_curve_reads_resumed_logs_and_the_plateau_fit_finds_the_asymptote(tmp_path):
    """bench_parity: the held-out curve of a log with several segments (a resumed run repeats a step: the
    last value wins) and the a + b * s^-c fit that says how far the newest point is from the plateau."""
    import bench_parity

    log = tmp_path / "teacher.log"
    steps = list(range(1000, 21000, 1000))
    values = {s: 0.03 + 0.4 * s**-0.5 for s in steps}
    lines = [f"INFO step {s}: held-out denoising loss {values[s]:.6f} (low 0.1)" for s in steps[:10]]
    lines += ["# segment started at commit abc1234", "INFO step 10000: held-out denoising loss 0.999000"]
    lines += [f"INFO step {s}: held-out denoising loss {values[s]:.6f}" for s in steps[10:]]
    log.write_text("\n".join(lines) + "\n")
    points = bench_parity.read_curve(log)
    assert [s for s, _ in points] == steps and dict(points)[10000] == 0.999
    fixed = [(s, values[s]) for s in steps]
    fit = bench_parity.fit_plateau(fixed)
    assert fit["a"] == pytest.approx(0.03, rel=0.02) and fit["c"] == pytest.approx(0.5, abs=0.05)
    assert fit["gap_to_plateau"] == pytest.approx(values[20000] / fit["a"] - 1, rel=1e-6)
    assert bench_parity.fit_plateau(fixed[:3]) is None  # too few points past warm-up
