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


# -- classification protocol 3 (issue 27): arms, paired 95% intervals, the mixed-defaults refusal ---------
def _row(arm, seed, top1, defaults=None, explicit=None, segments=None):
    row = {
        "name": f"students {arm} seed {seed}",
        "arm": arm,
        "seed": seed,
        "label": arm,
        "objective": "0.5 CE",
        "top1": {"report": top1, "select": top1},
        "explicit": explicit if explicit is not None else {"distiller": "red"},
        "library_defaults": defaults
        if defaults is not None
        else {"red_norm": "batch", "max_grad_norm": None},
        "commits": ["abc1234"],
    }
    if segments is not None:
        row["segments"] = segments
    return row


def test_classification_arms_compare_at_equal_task_weight():
    import bench_classification as cls

    plan = cls.arms({"red_alpha": 50, "other_distiller": "dkd"})
    assert {
        "plain",
        "plain_half",
        "student_plus_half",
        "red",
        "kd",
        "red_kd",
        "other_dkd",
        "plain_wide_half",
    } == set(plan)
    # the controls carry --task_weight 0.5; the distillers keep the reference's 0.5 CE + 0.5 distillation
    for name in ("plain_half", "student_plus_half", "plain_wide_half"):
        assert plan[name].flags[:2] == ("--task_weight", "0.5")
    assert "--task_weight" not in plan["plain"].flags and "--task_weight" not in plan["red"].flags
    assert plan["red"].flags == ("--red_alpha", "50") and plan["plain_wide_half"].wide
    assert cls.RECIPES["cpu"].seeds == (0, 1, 2) and cls.SELECT_SEED not in cls.RECIPES["cpu"].seeds
    recipe = cls.RECIPES["cpu"]
    flags = cls.student_flags(recipe, plan["red"], "teacher_dir", None)
    # every setting the arms differ in, and the RED block settings whose defaults changed before, are stated
    stated = cls.explicit_settings(flags)
    assert (
        stated["red_norm"] == "batch"
        and stated["student_init"] == "random"
        and stated["distill_weight"] == "0.5"
    )


def test_paired_interval_is_a_student_t_interval_over_shared_seeds():
    import common as cls  # shared by bench_classification and bench_parity

    out = cls.paired_interval({0: 0.60, 1: 0.62, 2: 0.64, 3: 0.9}, {0: 0.50, 1: 0.51, 2: 0.55})
    assert out["seeds"] == [0, 1, 2]  # seed 3 has no partner
    diffs = [0.10, 0.11, 0.09]
    assert out["diffs"] == pytest.approx(diffs) and out["mean"] == pytest.approx(0.10)
    half = 4.302653 * 0.01 / 3**0.5  # t(0.975, 2) * s.d. / sqrt(n); s.d. of the diffs is 0.01
    assert out["ci95"] == pytest.approx([0.10 - half, 0.10 + half], rel=1e-4)
    assert cls.paired_interval({0: 0.6}, {0: 0.5})["ci95"] is None  # one seed: no interval
    assert cls.paired_interval({0: 0.6}, {1: 0.5}) is None
    assert cls.T_975[2] == pytest.approx(cls.t_quantile(2), rel=1e-3)


def test_summary_pairs_seeds_and_names_each_contrast():
    import bench_classification as cls

    rows = [_row("red", s, v) for s, v in enumerate((0.60, 0.62, 0.64))]
    rows += [_row("plain_half", s, v) for s, v in enumerate((0.50, 0.51, 0.55))]
    rows += [_row("student_plus_half", s, v) for s, v in enumerate((0.58, 0.61, 0.60))]
    summary = cls.summarise(None, rows)
    contrasts = {c["contrast"]: c for c in summary["contrasts"]}
    assert set(contrasts) == {"red - plain (0.5 CE)", "red - student+ (0.5 CE)", "student+ - plain (0.5 CE)"}
    assert contrasts["red - student+ (0.5 CE)"]["diffs"] == pytest.approx([0.02, 0.01, 0.04])
    red = next(a for a in summary["arms"] if a["arm"] == "red")
    assert red["top1_mean"] == pytest.approx(0.62) and red["top1_sd"] == pytest.approx(0.02)
    text = cls.summary_markdown(
        None, summary, cls.RECIPES["cpu"], {"red_alpha": 50, "other_distiller": "dkd"}
    )
    # The other distiller's choice states its margin over the runner-up (a near tie should read as one).
    scores = {"dkd": 0.78, "at": 0.7768, "fitnet": 0.7804}
    choice = {"other_distiller": "fitnet", "select_top1": scores}
    assert cls._other(choice) == "FITNET (ahead of DKD by 0.04 points on select, one seed)"
    assert "+10.00" in text and "what the RED loss adds" in text and "s / step" not in text


def test_summary_answer_states_a_difference_only_once_both_arms_have_every_seed():
    """A one-seed difference is progress: RESULTS.md's answer line must not read it as a result (issue 27)."""
    import bench_classification as cls

    recipe = cls.RECIPES["cpu"]
    teacher = {"top1": {"report": 0.8668}}
    one_seed = cls.summarise(None, [_row("red", 0, 0.60), _row("plain_half", 0, 0.50)])
    assert [c["contrast"] for c in one_seed["contrasts"]] == ["red - plain (0.5 CE)"]
    early = cls._answer(teacher, one_seed, recipe, 2, 24)
    assert "no finished comparison yet (2 of 24 runs" in early and "+10.00" not in early
    rows = [_row("red", s, v) for s, v in enumerate((0.60, 0.62, 0.64))]
    rows += [_row("plain_half", s, v) for s, v in enumerate((0.50, 0.51, 0.55))]
    rows += [_row("kd", 0, 0.58)]
    full = cls._answer(teacher, cls.summarise(None, rows), recipe, 7, 24)
    assert full.startswith(
        "Classification (protocol 3, teacher 86.68% top-1 on the report slice; 7 of 24 runs)"
    )
    assert (
        "red - plain (0.5 CE) (RED (blocks + loss) at equal task weight) +10.00 points (95% interval ["
        in full
    )
    assert "3 seeds)" in full
    assert "kd - plain" not in full  # KD has one seed: not stated yet
    assert f"{len(cls.CONTRASTS) - 1} more contrast(s) wait until both of their arms have 3 seeds" in full


def test_summary_answer_states_issue_27s_questions_first_and_counts_the_rest_once_every_run_has_finished():
    import bench_classification as cls

    arms = [
        "plain",
        "plain_half",
        "student_plus_half",
        "red",
        "plain_wide_half",
        "kd",
        "red_kd",
        "other_fitnet",
    ]
    rows = [_row(arm, s, 0.50 + 0.01 * i + 0.002 * s) for i, arm in enumerate(arms) for s in range(3)]
    summary = cls.summarise(None, rows)
    assert len(summary["contrasts"]) == len(cls.CONTRASTS)
    answer = cls._answer({"top1": {"report": 0.8668}}, summary, cls.RECIPES["cpu"], 24, 24)
    stated = [answer.index(name + " (") for name in cls.ANSWER_CONTRASTS]
    assert stated == sorted(stated)  # the questions in the order of ANSWER_CONTRASTS
    assert "red - plain wide (0.5 CE) (RED against equal parameters without RED) -1.00 points" in answer
    assert f"{len(cls.CONTRASTS) - len(cls.ANSWER_CONTRASTS)} further contrast(s) in section 2" in answer
    assert "wait until" not in answer and "24 of 24 runs" in answer
    teacher = {"top1": {"report": 0.8668, "select": 0.8524}}
    text = cls.summary_markdown(
        teacher, summary, cls.RECIPES["cpu"], {"red_alpha": 50, "other_distiller": "fitnet"}
    )
    # Finished: the section reads as a result, names the best student and its distance to the teacher.
    assert "Runs finished: 24 of 24 (8 arms x 3 seeds). Best student: other_fitnet at 57.20%" in text
    assert "29.48 points below the teacher's 86.68%" in text
    assert "Paired differences over the 3 seeds" in text and "so far" not in text


def test_summary_refuses_rows_trained_under_different_unstated_defaults():
    import bench_classification as cls

    old = {"red_norm": "group", "max_grad_norm": None}
    rows = [_row("red", 0, 0.6), _row("plain_half", 0, 0.5, defaults=old)]
    with pytest.raises(cls.MixedDefaults, match="--red_norm"):
        cls.summarise(None, rows)
    # a row that states the setting is comparable whatever the default was when it trained
    stated = {"distiller": "vanilla", "red_norm": "batch"}
    cls.summarise(
        None, [_row("red", 0, 0.6, explicit={"red_norm": "batch"}), _row("plain_half", 0, 0.5, old, stated)]
    )
    # a run resumed across commits whose defaults differ is refused too (each segment is a record)
    segments = [{"library_defaults": {"red_norm": "batch"}}, {"library_defaults": {"red_norm": "group"}}]
    with pytest.raises(cls.MixedDefaults, match="red_norm"):
        cls.check_mixable([_row("red", 0, 0.6, segments=segments)])


def test_classification_library_defaults_are_recorded_as_json():
    import bench_classification as cls

    defaults = cls.library_defaults()
    assert defaults["max_grad_norm"] is None  # CLASSIFIER_DEFAULTS applied over the shared default 1.0
    assert "task_weight" in defaults and "red_norm" in defaults and "hub_token" not in defaults
    json.dumps(defaults)


def test_classification_summary_stage_keeps_history_and_refuses_mixed_rows(tmp_path, capsys):
    import bench_classification as cls

    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    common.write_json(tmp_path / "results" / "classification.json", {"history": [{"markdown": "OLD TABLE"}]})
    result = cls.summary_stage(layout)
    assert result["status"] == "not run" and result["history"] == [{"markdown": "OLD TABLE"}]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "History: earlier protocols of classification" in text and "OLD TABLE" in text
    assert "The teacher has finished" not in text
    kept = {"name": "teacher", "command": "python x.py", "top1": {"select": 0.8524, "report": 0.8668}}
    common.write_json(
        cls.teacher_artefact(layout) / "row.json",
        {**kept, "final_step": 10560, "params": 1241226, "commits": ["74f2fd3"], "output_dir": "teacher"},
    )
    cls.summary_stage(layout)
    assert (
        "top-1 85.24% on the select slice and 86.68% on the report slice"
        in (tmp_path / "RESULTS.md").read_text()
    )
    # a finished select run shows while the students are pending
    common.write_json(
        layout.run_dir("select", "red_alpha_1", cls.SELECT_SEED) / "row.json", {"top1": {"select": 0.7856}}
    )
    result = cls.summary_stage(layout)
    assert (
        "Select runs finished (seed 100, final-epoch top-1 on the select slice, which only chooses): RED alpha 1 78.56%; of 5"
        in (tmp_path / "RESULTS.md").read_text()
    )
    assert (
        result["choice"]["select_top1"] == {"red_alpha_1": 0.7856} and result["choice"]["red_alpha"] is None
    )
    for row in (_row("red", 0, 0.6), _row("plain_half", 0, 0.5, defaults={"red_norm": "group"})):
        folder = layout.work / "students" / f"{row['arm']}_seed0"
        common.write_json(folder / "row.json", {**row, "command": "python x.py"})
    with pytest.raises(SystemExit, match="summary refused: .*--red_norm"):
        cls.summary_stage(layout)


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


def test_classification_run_is_skipped_when_finished_or_held_by_a_live_process(tmp_path, monkeypatch):
    """A rerun never retrains a finished run, and two processes never train the same one: no training
    starts in either case (run_segment would raise)."""
    import os

    import bench_classification as cls

    def no_training(*args, **kwargs):
        raise AssertionError("a finished or held run was trained again")

    monkeypatch.setattr(cls, "run_segment", no_training)
    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    held = tmp_path / "held"
    held.mkdir()
    (held / ".lock").write_text(str(os.getpid()))  # this test's process: alive
    assert cls.train_run(layout, "held", ["--seed", 0], held, 1, {}) is None
    assert (held / ".lock").read_text() == str(os.getpid())  # another process's lock is left alone
    done = tmp_path / "done"
    common.write_json(done / "row.json", {"name": "done", "top1": {"report": 0.5}})
    assert cls.train_run(layout, "done", ["--seed", 0], done, 1, {})["top1"] == {"report": 0.5}


def test_parity_fid_matches_torch_fidelity_and_its_bootstrap_interval_matches_independent_draws():
    """bench_parity's FID (one symmetric eigen-decomposition per resample) is torch-fidelity's Frechet
    distance, and its bootstrap half-width is about 1.96 x the spread of FID over independent sample sets."""
    import numpy as np
    import parity_fid
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2000, 16, generator=generator, dtype=torch.float64)

    def draw() -> torch.Tensor:
        return 0.9 * torch.randn(300, 16, generator=generator, dtype=torch.float64) + 0.2

    samples = draw()
    expected = fid_statistics_to_metric(
        fid_features_to_statistics(samples), fid_features_to_statistics(reference), verbose=False
    )["frechet_inception_distance"]
    stats = parity_fid.reference_statistics(reference)
    assert parity_fid.fid(samples.numpy(), stats) == pytest.approx(expected, rel=1e-6)
    independent = np.std([parity_fid.fid(draw().numpy(), stats) for _ in range(40)], ddof=1)
    result = parity_fid.bootstrap_fid(samples, stats, resamples=100)
    assert result["fid_ci95_low"] < result["fid"] < result["fid_ci95_high"]
    assert 0.5 < result["fid_ci95"] / (1.96 * independent) < 2.0


def test_parity_image_statistics_read_contrast_saturation_and_brightness():
    import parity_fid
    import torch

    grey = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    assert parity_fid.image_statistics(grey) == {"contrast": 0.0, "saturation": 0.0, "brightness": 100.0}
    halves = grey.clone()
    halves[:, :, :2] = 200  # half the pixels at 200: std of {100, 200} x 8 each
    halves[:, 0] = 255  # a red channel at full: saturation (255 - min) / 255 per pixel
    stats = parity_fid.image_statistics(halves)
    assert stats["contrast"] == pytest.approx(torch.cat([halves[0].flatten()]).float().std().item())
    assert stats["saturation"] == pytest.approx(((255 - 200) + (255 - 100)) / 2 / 255)
    assert stats["brightness"] == pytest.approx(halves.float().mean().item())


def test_parity_table_becomes_results_section_3b_after_the_diffusion_part(tmp_path, monkeypatch):
    """bench_parity's table rows -> results/parity.json -> RESULTS.md section 3b, placed after part 3, with the
    commit that trained each row and FID only where it was scored."""
    import bench_parity

    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(bench_parity, "RESULTS", results)
    common.write_json(results / "diffusion.json", {"budget": "cpu", "status": "ok", "markdown": "part three"})
    row = {
        "arm": "plain_skip_teacher_init",
        "stem_stride": 2,
        "init": "teacher",
        "method": "vanilla",
        "seeds": [0, 1],
        "student_steps": 6000,
        "heldout_loss": 0.0308,
        "heldout_loss_per_seed": [0.0306, 0.0310],
        "heldout_loss_bands": {"low": 0.088, "mid": 0.0105, "high": 0.0016},
        "ratio": 1.143,
        "fid": None,
        "fid_ci95": None,
        "commit": ["7a13f44"],
    }
    scored = {
        **row,
        "arm": "plain",
        "init": "scratch",
        "heldout_loss_per_seed": [0.0326, 0.0328],
        "ratio": 1.206,
        "fid": 21.5,
        "fid_ci95": 0.8,
        "kid": 0.00123,
        "sample_contrast": 44.0,
        "sample_saturation": 0.1672,
        "peak_reduction": 1704584 / 426632,
    }
    teacher = {
        "denoise_loss": 0.02693,
        "denoise_loss_low": 0.08,
        "denoise_loss_mid": 0.01,
        "denoise_loss_high": 0.001,
    }
    bench_parity.write_report_section([row, scored], teacher)
    text = report.render(tmp_path).read_text()
    section = text[text.index("## 3b. Denoiser students") :]
    assert text.index("## 3. Diffusion") < text.index("## 3b. Denoiser students")
    assert (
        "| plain_skip_teacher_init | 2 | teacher | vanilla | 0, 1 | 6000 | 0.03080 | 1.143 | 1.10 / 1.05 / 1.60 | - |"
        " - | - | - | 7a13f44 |" in section
    )
    assert (
        "| 1.206 | 1.10 / 1.05 / 1.60 | 21.5 ± 0.8 | 1.23 | 44.0 / 0.167 | 3.995 | 7a13f44 |" in section
        and "0.02693" in section
    )
    # The paired difference of the two arms over their shared seeds 0 and 1, in units of the teacher's loss.
    pair = bench_parity.paired_rows([row, scored], 0.02693)
    assert [(p["arm"], p["baseline"]) for p in pair] == [("plain_skip_teacher_init", "plain")]
    assert pair[0]["diffs"] == pytest.approx([-0.0020 / 0.02693, -0.0018 / 0.02693])
    assert "plain_skip_teacher_init - plain | -0.071 |" in section


def test_parity_memory_stage_measures_each_design_from_the_committed_teacher(tmp_path, monkeypatch):
    """bench_parity memory: the exact peak of student designs built from the committed parity teacher, no
    training. At stride 2 a 32-channel tail of any depth stays under the UNet's own peak; at stride 4 it sets
    the peak itself (so a wide tail costs memory there), and the table under 3b says so."""
    import bench_parity

    monkeypatch.setattr(bench_parity, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_parity, "MEMORY_DESIGNS", [(2, 0, 1), (2, 32, 3), (4, 8, 1), (4, 32, 1)])
    rows = {(r["stem_stride"], r["refiner_channels"]): r for r in bench_parity.memory_stage()}
    assert rows[2, 32]["peak_bytes"] == rows[2, 0]["peak_bytes"]
    assert rows[2, 32]["reduction"] >= 3.99 and not rows[2, 32]["peak_layer"].startswith("refiner")
    assert rows[4, 32]["peak_layer"].startswith("refiner")
    assert rows[4, 8]["reduction"] > 2 * rows[4, 32]["reduction"] > 8
    table = bench_parity.memory_markdown()
    assert "| 2 | 32 ch, depth 3 |" in table and "| 4 | 32 ch, depth 1 |" in table


def test_parity_mixing_ablation_keeps_the_diagonal_of_the_input_skip_matrix():
    """handoff --ablate_mixing swaps in a gain layer whose matrix is the diagonal of the learned one, so the
    InputSkip's own forward gives diag(M(t)) x_t."""
    import bench_parity
    import torch

    from redistill_diffusion.diffusion.model import InputSkip

    torch.manual_seed(0)
    skip = InputSkip(3, 3, 16)
    torch.nn.init.normal_(skip.gain.weight)
    torch.nn.init.normal_(skip.gain.bias)
    embedding, sample = torch.randn(2, 16), torch.randn(2, 3, 4, 4)
    matrix = skip.gain(embedding).view(2, 3, 3)
    expected = torch.diagonal(matrix, dim1=1, dim2=2)[:, :, None, None] * sample
    full = skip(sample, embedding)
    skip.gain = bench_parity.diagonal_input_skip_gain(skip)
    assert torch.allclose(skip(sample, embedding), expected, atol=1e-6)
    assert not torch.allclose(full, expected, atol=1e-3)


def test_classification_students_before_the_select_stage_train_only_the_arms_it_does_not_change(
    tmp_path, monkeypatch
):
    """While the select runs are unfinished, `students` trains the arms no choice changes and refuses, in one
    line, an arm that needs the choice (RED's alpha, the best other distiller)."""
    import bench_classification as cls

    trained = []
    monkeypatch.setattr(cls, "trained_teacher", lambda layout, allow_weak: {"output_dir": "teacher"})
    monkeypatch.setattr(cls, "run_arm", lambda layout, arm, seed, *rest: trained.append((arm.name, seed)))
    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    cls.students_stage(layout, {}, 1, True, None, 0)
    assert sorted(name for name, _ in trained) == sorted(cls.CHOICE_FREE)
    with pytest.raises(SystemExit, match="--arm red needs the select stage's choice"):
        cls.students_stage(layout, {}, 1, True, "red", 0)
    # Once RED's alpha is chosen, RED and RED+KD train while the other distillers' select runs go on.
    for name, top1 in {"red_alpha_1": 0.5, "red_alpha_50": 0.6}.items():
        common.write_json(
            layout.run_dir("select", name, cls.SELECT_SEED) / "row.json", {"top1": {"select": top1}}
        )
    trained.clear()
    cls.students_stage(layout, {}, 1, True, None, 0)
    plan = {name for name, _ in trained}
    assert plan == set(cls.CHOICE_FREE) | {"red", "red_kd"}
    with pytest.raises(SystemExit, match="--arm other_dkd needs the select stage.s choice"):
        cls.students_stage(layout, {}, 1, True, "other_dkd", 0)
    # Once the select runs have chosen, every arm is in the plan, the chosen other distiller included.
    for name, top1 in {
        "dkd": 0.4,
        "at": 0.45,
        "fitnet": 0.3,
    }.items():
        common.write_json(
            layout.run_dir("select", name, cls.SELECT_SEED) / "row.json", {"top1": {"select": top1}}
        )
    trained.clear()
    cls.students_stage(layout, {}, 1, True, None, 0)
    assert {"red", "red_kd", "other_at"} <= {name for name, _ in trained} and len(trained) == 8


def test_classification_teacher_is_kept_as_an_artefact_that_later_stages_use_without_retraining(
    tmp_path, monkeypatch
):
    """A fresh machine has no benchmarks/_work: the finished teacher's folder is copied to the artefact
    folder (committed), and the teacher stage then returns it instead of training again."""
    import bench_classification as cls

    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    run = cls.teacher_dir(layout)
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "config.json").write_text("{}")
    (run / "checkpoint-700").mkdir()  # resume state stays behind
    row = {"output_dir": str(run), "top1": {"select": 0.9, "report": 0.89}}
    kept = cls.keep_teacher(layout, row)
    artefact = cls.teacher_artefact(layout)
    assert sorted(p.name for p in artefact.iterdir()) == ["config.json", "model.safetensors", "row.json"]
    assert kept["output_dir"] == cls.relative(artefact) and kept["trained_in"] == str(run)
    import shutil

    shutil.rmtree(run)  # the fresh machine
    assert cls.trained_teacher(layout, allow_weak=False)["output_dir"] == cls.relative(artefact)
    monkeypatch.setattr(cls, "train_run", lambda *a, **k: pytest.fail("the kept teacher was trained again"))
    assert cls.train_teacher(layout, {}, 1)["top1"]["select"] == 0.9


def _checkpoints(run, *steps):
    from redistill_diffusion.training.checkpointing import STATE_FILE

    for step in steps:
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / STATE_FILE).write_text("{}")
        (run / f"checkpoint-{step}" / "model.safetensors").write_bytes(str(step).encode())


def test_classification_teacher_parks_its_newest_checkpoint_and_a_fresh_machine_resumes_it(
    tmp_path, monkeypatch
):
    """`park` copies the unfinished teacher's newest complete checkpoint (and its segments) to the committed
    folder; on a machine without the run folder, the teacher stage copies it back and resumes."""
    import shutil

    import bench_classification as cls

    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    run = cls.teacher_dir(layout)
    _checkpoints(run, 700, 1050)
    (run / "checkpoint-1400").mkdir()  # incomplete (no state file): never parked
    common.write_json(run / "segments.json", {"segments": [{"commit": "abc1234"}]})
    (parked,) = cls.park(layout)
    assert parked.name == "checkpoint-1050" and (parked / "model.safetensors").read_bytes() == b"1050"
    assert sorted(p.name for p in parked.parent.iterdir()) == ["checkpoint-1050", "segments.json"]
    assert cls.park(layout) == []  # nothing new: the kept copy is not rewritten
    shutil.rmtree(run)  # the fresh machine
    resumed = []
    monkeypatch.setattr(cls, "train_run", lambda layout, name, flags, out, *rest: resumed.append(out) or None)
    monkeypatch.setattr(cls, "recipe_flags", lambda recipe, paths: [])  # no slices on disk here
    cls.train_teacher(layout, {"select": tmp_path / "s", "report": tmp_path / "r"}, 1)
    assert resumed == [run] and (run / "checkpoint-1050" / "model.safetensors").read_bytes() == b"1050"
    assert common.read_json(run / "segments.json")["segments"][0]["commit"] == "abc1234"


def test_classification_runs_outlive_the_machine_finished_rows_are_skipped_and_parked_ones_resume(
    tmp_path, monkeypatch
):
    """A session's machine may be gone by the next one: a finished run's row is kept as it finishes, `park`
    keeps an unfinished run's newest checkpoint, and on a fresh machine the finished run is skipped (its row
    still chooses and is summarised) while the parked one resumes from its checkpoint, not from step 0."""
    import shutil

    import bench_classification as cls

    layout = cls.Layout(tmp_path / "work", tmp_path, tmp_path / "logs", cls.RECIPES["smoke"], smoke=True)
    monkeypatch.setattr(cls, "trained_teacher", lambda layout, allow_weak: {"output_dir": "teacher"})
    monkeypatch.setattr(cls, "student_flags", lambda *a: [])
    monkeypatch.setattr(cls, "recipe_flags", lambda recipe, paths: [])

    def finish(layout, name, flags, out, threads, score_on):
        row = {"name": name, "output_dir": str(out), "top1": {"select": 0.5 + len(name) / 100}}
        common.write_json(out / "row.json", row)
        return common.read_json(out / "row.json")

    monkeypatch.setattr(cls, "train_run", finish)
    paths = {"select": tmp_path / "s", "report": tmp_path / "r"}
    cls.select_stage(layout, paths, 1, True, "red_alpha_50")
    kept = cls.kept_runs(layout) / "select" / f"red_alpha_50_seed{cls.SELECT_SEED}" / "row.json"
    assert common.read_json(kept)["arm"] == "red_alpha_50"  # kept at once, no park needed
    unfinished = layout.run_dir("students", "plain", 0)
    _checkpoints(unfinished, 4, 8)
    common.write_json(unfinished / "segments.json", {"segments": [{"commit": "abc1234"}]})
    assert [p.name for p in cls.park(layout)] == ["checkpoint-8"]

    shutil.rmtree(layout.work)  # the fresh machine
    trained = []
    monkeypatch.setattr(cls, "train_run", lambda layout, name, flags, out, *rest: trained.append(name))
    cls.select_stage(layout, paths, 1, True, "red_alpha_50")
    assert trained == []  # finished elsewhere: skipped
    assert cls.choose(layout)["select_top1"] == {"red_alpha_50": common.read_json(kept)["top1"]["select"]}
    cls.students_stage(layout, paths, 1, True, "plain", 0)
    assert trained == ["students plain seed 0"]
    assert (unfinished / "checkpoint-8" / "model.safetensors").read_bytes() == b"8"
    assert common.read_json(unfinished / "segments.json")["segments"] == [{"commit": "abc1234"}]
    # A run whose own checkpoint is newer than the parked one keeps its own.
    shutil.rmtree(unfinished / "checkpoint-8")
    _checkpoints(unfinished, 12)
    cls.unpark(layout)
    assert not (unfinished / "checkpoint-8").exists()


def test_parity_recipe_trains_exactly_the_benchmarks_best_stride2_arm():
    """recipes/ddpm_cifar10_parity_cpu.yaml is what the README offers for the measured best student: parsed, it
    must give the same settings as the benchmark arm whose figures it quotes (only the data and the output
    folder differ), so the two cannot drift apart."""
    import bench_parity

    from redistill_diffusion.config import parse_args, to_dict
    from redistill_diffusion.diffusion.run import REDISTILL_ARGUMENTS

    arm = "output_mse_skip_input_refiner32x3_teacher_init_long"
    flags = ["--teacher_model_name_or_path", str(bench_parity.TEACHER_ARTEFACT.relative_to(BENCH_DIR.parent))]
    flags += ["--dataset_name", "train.parquet", "--random_flip"]
    for key, value in bench_parity.STUDENT_RECIPE.items():
        flags += [f"--{key}", str(value)]
    flags += ["--max_train_steps", "12000", "--seed", "0", *bench_parity.ARMS[arm][1], "--output_dir", "out"]
    recipe = BENCH_DIR.parent / "recipes/ddpm_cifar10_parity_cpu.yaml"
    from_recipe = [to_dict(a) for a in parse_args(REDISTILL_ARGUMENTS, ["--recipe", str(recipe)])]
    from_benchmark = [to_dict(a) for a in parse_args(REDISTILL_ARGUMENTS, flags)]
    differ = {
        key for ours, theirs in zip(from_recipe, from_benchmark) for key in ours if ours[key] != theirs[key]
    }
    # The benchmark states bf16 (its machine computes bf16 natively); the recipe says auto, which is bf16 there
    # and fp32 on a CPU that would only emulate bf16.
    assert differ == {"dataset_name", "output_dir", "mixed_precision"}
    assert from_recipe[0]["mixed_precision"] == "auto" and from_benchmark[0]["mixed_precision"] == "bf16"
    assert from_recipe[0]["max_train_steps"] == 12000 and from_recipe[-1]["input_skip"] is True


def test_teacher_layout_benchmark_times_both_layouts_and_refuses_to_overwrite_results(tmp_path, capsys):
    import bench_teacher_layout as layout

    with pytest.raises(SystemExit):
        layout.main(["--smoke"])
    assert "must not overwrite" in capsys.readouterr().err
    assert layout.main(["--smoke", "--output_dir", str(tmp_path), "--repeats", "1", "--steps", "1"]) == 0
    result = json.loads((tmp_path / "results" / layout.RESULTS_NAME).read_text())
    assert len(result["rows"]) == 4 and {r["precision"] for r in result["rows"]} == {"bf16", "fp32"}
    for row in result["rows"]:
        assert row["default_s"] > 0 and row["channels_last_s"] > 0
        assert row["speedup"] == pytest.approx(row["default_s"] / row["channels_last_s"])
        assert row["max_rel_diff_fp32"] < 1e-4  # the same function, up to float rounding


def test_parity_samplers_stage_scores_both_models_under_each_sampler_with_the_same_noise(
    tmp_path, monkeypatch
):
    """bench_parity samplers: the teacher and a student sampled under each sampler from the same noise, rows
    saved as they finish, and one RESULTS.md note per run. Here the 'student' is the committed teacher itself,
    so equal weights must give equal statistics under each sampler (the ancestral one included)."""
    import bench_parity

    monkeypatch.setattr(bench_parity, "RESULTS", tmp_path)
    students = tmp_path / "students"
    students.mkdir()
    (students / "copy_seed0").symlink_to(bench_parity.TEACHER_ARTEFACT.resolve())
    monkeypatch.setattr(bench_parity, "STUDENTS", students)
    monkeypatch.setattr(bench_parity, "SAMPLERS", (("ddim", 2), ("ddpm", 3)))
    rows = bench_parity.samplers_stage("copy_seed0", num_samples=2)["rows"]
    assert [(r["model"], r["sampler"], r["steps"]) for r in rows] == [
        ("student", "ddim", 2),
        ("student", "ddpm", 3),
        ("teacher", "ddim", 2),
        ("teacher", "ddpm", 3),
    ]
    for student_row, teacher_row in zip(rows[:2], rows[2:]):
        assert student_row["saturation"] == pytest.approx(teacher_row["saturation"])
        assert student_row["contrast"] == pytest.approx(teacher_row["contrast"])
    assert rows[0]["contrast"] != pytest.approx(rows[1]["contrast"])  # two samplers, two sample sets
    saved = json.loads((tmp_path / "parity_samplers.json").read_text())["runs"]
    assert [run["student"] for run in saved] == ["copy_seed0"] and saved[0]["rows"] == rows
    note = bench_parity.sampler_note(saved[0], 0.128)
    student_part, teacher_part = note.split("; teacher ")
    assert "student DDIM-2 " in student_part and ", DDPM-3 " in student_part
    assert teacher_part.startswith("DDIM-2 ") and ", DDPM-3 " in teacher_part
    assert note.endswith("held-out real images 0.128.")


@pytest.mark.parametrize("stage", ["handoff", "samplers"])
def test_parity_sampling_stages_refuse_a_student_that_has_not_finished(tmp_path, monkeypatch, capsys, stage):
    """handoff / samplers name one student folder; a missing one is a one-line error before any model loads."""
    import bench_parity

    monkeypatch.setattr(bench_parity, "STUDENTS", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        bench_parity.main([stage, "--names", "plain_seed7"])
    assert exit_info.value.code == 2
    assert "no finished student plain_seed7" in capsys.readouterr().err


def test_parity_answer_names_the_best_three_seed_student_the_plain_one_red_and_stride_4(
    tmp_path, monkeypatch
):
    """RESULTS.md's answer for denoisers comes from the parity table: the best stride-2 student counts only among
    rows with >= 3 seeds (a lucky single seed does not headline), and `report` re-renders it from the JSON alone."""
    import bench_parity

    def row(arm, ratio, seeds=(0, 1, 2), stride=2, method="output_mse", fid=None):
        return {
            "arm": arm, "ratio": ratio, "seeds": list(seeds), "stem_stride": stride, "method": method,
            "init": "teacher", "student_steps": 6000, "fid": fid, "fid_teacher": 50.0, "peak_reduction": 4.0,
        }  # fmt: skip

    rows = [
        row("plain", 1.2, fid=150.0),
        row("lucky", 1.01, seeds=(0,)),
        row("best", 1.04, fid=55.0),
        row("red_gn", 1.26, method="red"),
        row("s4", 1.3, seeds=(0,), stride=4),
    ]
    answer = bench_parity.parity_answer(rows)
    assert "best stride-2 student (`best`" in answer and "1.040x" in answer and "FID 55.0 (1.10x" in answer
    assert "`lucky`" not in answer
    assert "plain student (`plain`" in answer and "best RED row (`red_gn`" in answer
    assert "best stride-4 student (`s4`" in answer
    monkeypatch.setattr(bench_parity, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_parity, "TEACHER_ARTEFACT", tmp_path / "teacher")
    teacher = {
        "heldout_loss_report": 0.03,
        "heldout_loss_bands_report": {b: 0.03 for b in bench_parity.BANDS},
    }
    for r in rows:
        r.update(heldout_loss=0.03 * r["ratio"], heldout_loss_bands=teacher["heldout_loss_bands_report"])
        r.update(fid_ci95=None if r["fid"] is None else 2.0, commit=["abc1234"])
        r["heldout_loss_per_seed"] = [r["heldout_loss"]] * len(r["seeds"])
    common.write_json(tmp_path / "diffusion_parity.json", {"teacher": teacher, "rows": rows, "paired": []})
    assert bench_parity.report_stage()["summary"] == answer
