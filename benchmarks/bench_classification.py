"""Part 2: classification on CIFAR-10. One teacher, one aggressively downsampled student, every distiller.

Protocol v2 (issue 11), two regimes in separate tables:

(a) paper regime: every student, vanilla included, trained from scratch (``--student_init random``, as
    the reference code does) with the teacher's own recipe and the same number of steps as the teacher;
(b) fine-tune regime, what a user with a trained teacher does: students initialised from the teacher
    (``--student_init teacher``; RED rows and student_plus with identity-initialised RED blocks) at a
    stated, smaller budget.

Every run is `examples/train_classifier_redistill.py` (a logged subprocess) with the same data and data
order per seed; the numbers come from the ``results.json`` each run writes (final and best top-1 on the
held-out slice or ``--eval_data``, peak memory from `redistill_diffusion.memory`, parameters, seconds per
step). Rows give mean ± s.d. over seeds and the per-seed paired difference to the vanilla student of
the same regime.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    CommandFailed,
    CommandRecord,
    ComponentMissing,
    Variant,
    fmt_bytes,
    markdown_table,
    not_run,
    part_result,
    python_argv,
    relative,
    require_file,
    run_logged,
    run_paper_commands,
    slug,
    stratified_slices,
    write_json,
)

SCRIPT = REPO_ROOT / "examples/train_classifier_redistill.py"
# The paper budget's arms (one run per distiller with the shipped ImageNet recipe).
DISTILLERS = ("vanilla", "red", "red+kd", "kd", "dkd", "fitnet", "at", "student_plus")
REGIMES = {
    "scratch": "(a) paper regime: students from scratch, the teacher's recipe and number of steps",
    "finetune": "(b) fine-tune regime: students initialised from the teacher",
}
VALIDATION_PER_CLASS = 500  # 5,000 held-out images, 500 per CIFAR-10 class
# Runs written before protocol v2 trained with the library's old defaults (students from the teacher's
# weights, gradients clipped at 1.0) under commands that can look the same: never reuse them.
PROTOCOL = 2
# The reference code's RED alpha for the closest setting to small CIFAR-10 data (STL10); alpha 1
# (ImageNet, and the library default) is a variant row.
RED_ALPHA = 50.0
EVALUATIONS = 4  # evaluations per run (every steps / 4 and at the end): top-1 final and best


@dataclass
class ClassificationBudget:
    architecture: str
    timm_model_args: dict[str, Any]
    stem_stride: int
    train_batch_size: int
    teacher_steps: int  # also the steps of every regime (a) student
    finetune_steps: int  # regime (b)
    learning_rate: float
    seeds: dict[str, tuple[int, ...]]  # per regime
    arms: dict[str, list[Variant]]  # per regime, in run order, seed-less (the seeds multiply them)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    mixed_precision: str = "bf16"
    threads: int = 2
    synthetic: bool = False
    synthetic_images: int = 256
    note: str = ""  # why these steps and seeds, for the table text

    def steps_of(self, variant: Variant) -> int:
        return self.teacher_steps if variant.regime == "scratch" else self.finetune_steps

    def variants(self, seeds: tuple[int, ...] | None = None) -> list[Variant]:
        """Every run in order, so a run cut short still answers the main questions: regime (a)'s core arms
        (the plain student, RED, RED+KD, RED-GroupNorm, KD: the first ``CORE_ARMS``) at every seed, then
        regime (b)'s core arms at the first seed, then the other arms at the first seed, then the rest.
        ``seeds`` (``--seeds``) replaces both regimes' seeds."""
        per_regime = {r: tuple(seeds) if seeds else self.seeds.get(r, ()) for r in REGIMES}

        def runs(regime: str, arms: list[Variant], seed_list) -> list[Variant]:
            return [
                Variant(arm.label, arm.distiller, regime, dict(arm.flags), seed)
                for seed in seed_list
                if seed in per_regime[regime]
                for arm in arms
            ]

        core = {r: self.arms.get(r, [])[: CORE_ARMS[r]] for r in REGIMES}
        rest = {r: self.arms.get(r, [])[CORE_ARMS[r] :] for r in REGIMES}
        every = sorted(set().union(*per_regime.values()))
        first, later = every[:1], every[1:]
        ordered = runs("scratch", core["scratch"], every) + runs("finetune", core["finetune"], first)
        ordered += runs("scratch", rest["scratch"], first) + runs("finetune", rest["finetune"], first)
        ordered += runs("finetune", core["finetune"], later)
        ordered += runs("scratch", rest["scratch"], later) + runs("finetune", rest["finetune"], later)
        return ordered


# The leading arms of each regime that run at every seed before the other arms run at all.
CORE_ARMS = {"scratch": 5, "finetune": 3}


RED = {"red_alpha": RED_ALPHA}
IDENTITY = {"red_init": "identity"}


def _arms() -> dict[str, list[Variant]]:
    """Protocol v2 arms. Run order: the method and the plain student first, so a budget cut short still
    answers the question; regime (a) adds the alpha-1 and GroupNorm (issue 16) RED variants."""
    scratch = [
        Variant("vanilla", "vanilla"),
        Variant("red", "red", flags=RED),
        Variant("red+kd", "red+kd", flags=RED),
        Variant("red (GroupNorm)", "red", flags={**RED, "red_norm": "group"}),
        Variant("kd", "kd"),
        Variant("dkd", "dkd"),
        Variant("fitnet", "fitnet"),
        Variant("at", "at"),
        Variant("student_plus", "student_plus"),
        Variant("red (alpha 1)", "red", flags={"red_alpha": 1.0}),
    ]
    finetune = [
        Variant("vanilla", "vanilla", "finetune"),
        Variant("red (identity init)", "red", "finetune", flags={**RED, **IDENTITY}),
        Variant("red+kd (identity init)", "red+kd", "finetune", flags={**RED, **IDENTITY}),
        Variant("kd", "kd", "finetune"),
        Variant("dkd", "dkd", "finetune"),
        Variant("fitnet", "fitnet", "finetune"),
        Variant("at", "at", "finetune"),
        # The same identity-initialised blocks as the RED rows, without the RED loss.
        Variant("student_plus (identity init)", "student_plus", "finetune", flags=IDENTITY),
    ]
    return {"scratch": scratch, "finetune": finetune}


BUDGETS: dict[str, ClassificationBudget] = {
    "smoke": ClassificationBudget(
        architecture="resnet18",
        timm_model_args={"channels": [8, 16, 16, 16], "stem_width": 8, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        train_batch_size=16,
        teacher_steps=4,
        finetune_steps=2,
        learning_rate=0.05,
        seeds={"scratch": (0,), "finetune": (0,)},
        arms={
            "scratch": [Variant("vanilla", "vanilla"), Variant("red+kd", "red+kd", flags=RED)],
            "finetune": [
                Variant(
                    "red (GroupNorm, identity init)",
                    "red",
                    "finetune",
                    flags={**RED, "red_norm": "group", **IDENTITY},
                )
            ],
        },
        mixed_precision="no",
        synthetic=True,
        note="Smoke budget: synthetic shapes, a few steps, one seed; it checks the harness, not the method.",
    ),
    "cpu": ClassificationBudget(
        # Sized to about 100 min on this 2-core machine when idle. Measured there (batch 64, bf16): teacher
        # 0.215 s/step (0.27 s/step of wall time with data and evaluation), students 0.09 s/step (vanilla,
        # student_plus ~0.10) and ~0.14 s/step with a teacher forward (every distiller), ~0.11 and ~0.155 s
        # of wall time per step, plus ~23 s per run (start-up, teacher top-1, 4 evaluations, peak memory).
        # Estimate: teacher 1,200 x 0.27 + 20 = 344 s; (a) 10 arms x 2 seeds x 1,200 steps:
        # 2 x (1,200 x (0.107 + 0.116 + 8 x 0.155) + 230) = 3,971 s; (b) 8 arms x 2 seeds x 500 steps:
        # 2 x (500 x (0.107 + 0.116 + 6 x 0.155) + 184) = 1,522 s; total 5,837 s = 97 min.
        # The old budget (3,000-step teacher, 600-step students) cannot hold from-scratch students at the
        # teacher's steps: 3,000-step students alone would take ~4 h. 1,200 steps (1.7 epochs) is the
        # longest teacher/student length that leaves room for (b) with every arm at two seeds; three seeds
        # would need ~45 min more, so both regimes use two (the minimum the protocol allows).
        architecture="resnet18",
        timm_model_args={"channels": [32, 64, 128, 256], "stem_width": 32, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        train_batch_size=64,
        teacher_steps=1200,
        finetune_steps=500,
        learning_rate=0.05,
        seeds={"scratch": (0, 1), "finetune": (0, 1)},
        arms=_arms(),
        note=(
            "The budget is sized for about 100 minutes on 2 idle CPU cores: regime (a) needs students as long as "
            "the teacher, so the teacher trains 1,200 steps (1.7 epochs; the earlier tables used 3,000) and both "
            "regimes use two seeds, the protocol's minimum (three would need ~45 min more; the comment of "
            "`BUDGETS['cpu']` in benchmarks/bench_classification.py gives the arithmetic)."
        ),
    ),
}

PAPER_RECIPE = "recipes/cls_imagenet_resnet18_red.yaml"


def _common_flags(
    spec: ClassificationBudget, train_data: Path, eval_data: Path, out: Path, steps: int, seed: int
) -> list[Any]:
    """The teacher's recipe, which regime (a) students share (no gradient clipping: the library's
    classification default, as in the reference code)."""
    flags: list[Any] = [
        "--dataset_name",
        relative(train_data),
        "--eval_data",
        relative(eval_data),
        "--resolution",
        32,
        "--train_batch_size",
        spec.train_batch_size,
        "--max_train_steps",
        steps,
        "--optimizer",
        "sgd",
        "--learning_rate",
        spec.learning_rate,
        "--sgd_nesterov",
        "--sgd_weight_decay",
        5e-4,
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        max(1, steps // 20),
        "--use_ema",
        "False",
        "--mixed_precision",
        spec.mixed_precision,
        "--checkpointing_steps",
        0,
        "--validation_steps",
        max(1, steps // EVALUATIONS),
        "--logger",
        "none",
        "--train_crop_scale_min",
        0.35,
        "--color_jitter",
        0,
        "--eval_crop_pct",
        1.0,
        "--eval_batch_size",
        500,
        "--seed",
        seed,
        "--output_dir",
        relative(out),
        "--overwrite_output_dir",
    ]
    if spec.max_eval_samples is not None:
        flags += ["--max_eval_samples", spec.max_eval_samples]
    if spec.max_train_samples is not None:
        flags += ["--max_train_samples", spec.max_train_samples]
    return flags


def _read_results(out: Path) -> dict[str, Any]:
    path = out / "results.json"
    if not path.is_file():
        raise CommandFailed(f"{relative(path)} was not written")
    return json.loads(path.read_text())


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _reusable(out: Path, argv: list[str]) -> dict[str, Any] | None:
    """The record of a finished run of exactly this command under this protocol, if there is one."""
    stamp = out / "benchmark_run.json"
    if not (out / "results.json").is_file() or not stamp.is_file():
        return None
    saved = json.loads(stamp.read_text())
    same = saved.get("argv") == [str(a) for a in argv[1:]] and saved.get("protocol") == PROTOCOL
    return saved if same else None


def _train(
    name: str, argv: list[str], out: Path, log_dir: Path, spec: ClassificationBudget, reuse: bool
) -> dict[str, Any]:
    previous = _reusable(out, argv) if reuse else None
    if previous is not None:
        return previous | {"reused": True, "results": _read_results(out)}
    record = CommandRecord(name=name, argv=argv)
    run_logged(record, log_dir / f"classification_{slug(name)}.log", threads=spec.threads)
    info = {"argv": [str(a) for a in argv[1:]], "protocol": PROTOCOL, "command": record.to_dict()}
    (out / "benchmark_run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info | {"reused": False, "results": _read_results(out)}


def run(
    output_dir: Path,
    work_dir: Path,
    budget: str,
    data: Path,
    eval_data: Path | None = None,
    seeds=None,
    reuse_runs: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    if budget == "paper":
        return paper_commands(output_dir, dry_run)
    spec = BUDGETS[budget]
    try:
        require_file(SCRIPT, "issue 5: classification training script")
    except ComponentMissing as error:
        return not_run("classification", budget, str(error))
    if spec.synthetic:
        from bench_diffusion import synthetic_parquet

        train_data, held_out = synthetic_parquet(work_dir, spec.synthetic_images, 32)
    else:
        train_data, held_out = stratified_slices(data, work_dir, VALIDATION_PER_CLASS)
    evaluation = eval_data or held_out
    variants = spec.variants(tuple(seeds) if seeds else None)
    num_train = (
        _num_rows(train_data)
        if spec.max_train_samples is None
        else min(spec.max_train_samples, _num_rows(train_data))
    )
    work = work_dir / "classification"
    log_dir = output_dir / "logs"
    result = part_result(
        "classification",
        budget,
        status="running",
        budget_settings={
            "protocol": PROTOCOL,
            "architecture": spec.architecture,
            "timm_model_args": spec.timm_model_args,
            "stem_stride": spec.stem_stride,
            "train_batch_size": spec.train_batch_size,
            "teacher_steps": spec.teacher_steps,
            "scratch_steps": spec.teacher_steps,
            "finetune_steps": spec.finetune_steps,
            "train_images": num_train,
            "eval_data": relative(evaluation),
            "seeds": {r: sorted({v.seed for v in variants if v.regime == r}) for r in REGIMES},
            "mixed_precision": spec.mixed_precision,
            "learning_rate": spec.learning_rate,
            "red_alpha": RED_ALPHA,
            "evaluations_per_run": EVALUATIONS,
            "max_grad_norm": None,
            "teacher_mode": "eval",
            "variants": [vars(v) | {"key": v.key} for v in variants],
            "note": spec.note,
        },
    )
    commands = result["commands"]

    teacher_dir = work / "teacher"
    teacher_argv = python_argv(
        SCRIPT,
        "--model_name_or_path",
        spec.architecture,
        "--cifar_stem",
        "--timm_model_args",
        json.dumps(spec.timm_model_args, separators=(",", ":")),
        # One teacher (seed 0) for every seed and both regimes: --seeds varies the students only.
        "--distiller",
        "none",
        *_common_flags(spec, train_data, evaluation, teacher_dir, spec.teacher_steps, 0),
    )
    try:
        teacher = _train("teacher", teacher_argv, teacher_dir, log_dir, spec, reuse_runs)
    except CommandFailed as error:
        return not_run("classification", budget, f"teacher training failed: {error}", commands=commands)
    commands.append(
        teacher["command"]
        | ({"name": "teacher (reused from an earlier identical run)"} if teacher["reused"] else {})
    )

    runs: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for variant in variants:
        out = work / "students" / slug(variant.key)
        argv = python_argv(
            SCRIPT,
            "--teacher_model_name_or_path",
            relative(teacher_dir),
            "--stem_stride",
            spec.stem_stride,
            "--student_init",
            "random" if variant.regime == "scratch" else "teacher",
            "--teacher_mode",
            "eval",
            "--distiller",
            variant.distiller,
            "--distill_weight",
            0.5,
            *[x for k, v in variant.flags.items() for x in (f"--{k}", v)],
            *_common_flags(spec, train_data, evaluation, out, spec.steps_of(variant), variant.seed),
        )
        try:
            info = _train(f"student {variant.key}", argv, out, log_dir, spec, reuse=reuse_runs)
            commands.append(
                info["command"]
                | (
                    {"name": f"student {variant.key} (reused from an earlier identical run)"}
                    if info["reused"]
                    else {}
                )
            )
            runs[variant.key] = info | {"variant": variant}
        except CommandFailed as error:
            failures.append(str(error))
        _publish(result, teacher, runs, spec, num_train, failures, output_dir)
    result["status"] = "ok" if not failures else ("partial" if runs else "not run")
    _publish(result, teacher, runs, spec, num_train, failures, output_dir)
    return result


def _publish(result, teacher, runs, spec, num_train, failures, output_dir: Path) -> None:
    """Rows and tables so far, written after every run: a run cut short still reports what finished."""
    rows = _rows(teacher, runs, spec, num_train)
    result["rows"] = rows
    result["markdown"] = _markdown(rows, result["budget_settings"])
    result["summary"] = _summary(rows)
    if failures:
        result["reason"] = "; ".join(failures)
    write_json(output_dir / "results" / "classification.json", result)
    try:
        from report import render

        render(output_dir)
    except Exception as error:  # the report is regenerated at the end anyway
        print(f"[benchmarks] report not rendered: {error}")


def _metric(results: dict[str, Any], key: str) -> float | None:
    metrics = results.get("metrics") or {}
    value = metrics.get(key)
    return float(value) if value is not None else None


def _peak_bytes(results: dict[str, Any], convention: str, role: str) -> int | None:
    """The teacher's or student's peak bytes in ``convention`` from results.json's ``peak_memory`` (the
    schema of ``redistill_diffusion.memory.MemorySummary``, or the flat one of earlier runs)."""
    from redistill_diffusion.memory import MemorySummary

    summary = MemorySummary.from_dict(results.get("peak_memory"))
    return getattr(summary[convention], role).peak_bytes if convention in summary else None


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _row(
    regime: str, label: str, infos: list[dict[str, Any]], steps: int, batch: int, num_train: int
) -> dict[str, Any]:
    final = {i["variant"].seed: _metric(i["results"], "top1") for i in infos}
    best = {i["variant"].seed: _metric(i["results"], "best_top1") for i in infos}
    results = infos[0]["results"]
    memory = results.get("peak_memory") or {}
    sps = [i["results"].get("seconds_per_step") for i in infos if i["results"].get("seconds_per_step")]
    walls = [(i.get("command") or {}).get("wall_s") for i in infos if (i.get("command") or {}).get("wall_s")]
    first = infos[0]["variant"]
    top1_mean, top1_std = _mean_std(list(final.values()))
    best_mean, best_std = _mean_std(list(best.values()))
    return {
        "regime": regime,
        "model": label,
        "distiller": first.distiller,
        "flags": first.flags,
        "seeds": sorted(final),
        "steps": steps,
        "top1_mean": top1_mean,
        "top1_std": top1_std,
        "top1_per_seed": final,
        "best_top1_mean": best_mean,
        "best_top1_std": best_std,
        "best_top1_per_seed": best,
        "params": infos[0]["results"].get("params"),
        "peak_bytes_exact": _peak_bytes(results, "exact", "student"),
        "peak_bytes_paper": _peak_bytes(results, "paper", "student"),
        "teacher_peak_bytes_exact": _peak_bytes(results, "exact", "teacher"),
        "teacher_peak_bytes_paper": _peak_bytes(results, "paper", "teacher"),
        "ratio_exact": (memory.get("exact") or {}).get("ratio"),
        "seconds_per_step": statistics.mean(sps) if sps else None,
        "seconds_per_epoch": statistics.mean(sps) * num_train / batch if sps else None,
        "wall_s": statistics.mean(walls) if walls else None,
    }


def _rows(
    teacher: dict[str, Any], runs: dict[str, dict[str, Any]], spec: ClassificationBudget, num_train: int
) -> list[dict[str, Any]]:
    """The teacher, then one row per (regime, label) aggregated over seeds, with the paired per-seed
    difference to the vanilla student of the same regime."""
    t = teacher["results"]
    batch = spec.train_batch_size
    teacher_row = {
        "regime": "teacher",
        "model": "teacher",
        "seeds": [0],
        "top1_mean": _metric(t, "top1"),
        "top1_std": None,
        "best_top1_mean": _metric(t, "best_top1"),
        "best_top1_std": None,
        "params": t.get("params"),
        "seconds_per_step": t.get("seconds_per_step"),
        "seconds_per_epoch": t["seconds_per_step"] * num_train / batch if t.get("seconds_per_step") else None,
        "wall_s": (teacher.get("command") or {}).get("wall_s"),
        "steps": t.get("global_step"),
    }
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for info in runs.values():
        variant = info["variant"]
        groups.setdefault((variant.regime, variant.label), []).append(info)
    rows = [teacher_row] + [
        _row(regime, label, infos, spec.steps_of(infos[0]["variant"]), batch, num_train)
        for (regime, label), infos in groups.items()
    ]
    # The teacher's peak memory is measured by every student run (compare(teacher, student)).
    for row in rows[1:]:
        if row.get("teacher_peak_bytes_exact"):
            teacher_row["peak_bytes_exact"] = row["teacher_peak_bytes_exact"]
            teacher_row["peak_bytes_paper"] = row["teacher_peak_bytes_paper"]
            break
    for row in rows[1:]:
        vanilla = next((r for r in rows if r["regime"] == row["regime"] and r["model"] == "vanilla"), None)
        if vanilla is None or row is vanilla:
            continue
        for key in ("top1", "best_top1"):
            mine, theirs = row[f"{key}_per_seed"], vanilla[f"{key}_per_seed"]
            diffs = {
                s: mine[s] - theirs[s]
                for s in mine
                if s in theirs and mine[s] is not None and theirs[s] is not None
            }
            row[f"{key}_diff_per_seed"] = diffs
            row[f"{key}_diff_mean"], row[f"{key}_diff_std"] = _mean_std(list(diffs.values()))
        if vanilla.get("seconds_per_step") and row.get("seconds_per_step"):
            row["step_time_vs_vanilla"] = row["seconds_per_step"] / vanilla["seconds_per_step"]
    return rows


def _pct(mean: float | None, std: float | None, signed: bool = False) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def _paired(row: dict[str, Any], key: str = "top1") -> str:
    """Mean ± s.d. of the per-seed differences to vanilla, then each seed's difference."""
    diffs = row.get(f"{key}_diff_per_seed")
    if not diffs:
        return "-"
    each = ", ".join(f"{100 * d:+.2f}" for _, d in sorted(diffs.items()))
    return f"{_pct(row[f'{key}_diff_mean'], row[f'{key}_diff_std'], signed=True)} ({each})"


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    teacher = next((r for r in rows if r["regime"] == "teacher"), None)
    teacher_peak = (teacher or {}).get("peak_bytes_exact")
    header = [
        "model",
        "seeds",
        "steps",
        "top-1 % final (mean ± s.d.)",
        "final vs vanilla (paired; per seed)",
        "top-1 % best",
        "best vs vanilla (paired)",
        "peak memory (exact)",
        "teacher / model",
        "peak (paper conv.)",
        "params",
        "s / step",
        "s / step vs vanilla",
    ]
    args = settings["timm_model_args"]
    seeds = settings["seeds"]
    text = [
        f"Teacher: timm {settings['architecture']} with a CIFAR stem (3x3 stride 1, no max-pool), channels "
        f"{args.get('channels')}, blocks {args.get('layers')}, trained from scratch for {settings['teacher_steps']} steps "
        f"at batch {settings['train_batch_size']} (SGD nesterov lr {settings['learning_rate']}, cosine with 5% warm-up, "
        f"weight decay 5e-4, {settings['mixed_precision']} autocast, no gradient clipping) on {settings['train_images']} "
        f"training images; top-1 on {settings['eval_data']}. Students: the same network with stem stride "
        f"{settings['stem_stride']} (the deepest stride-2 stages give the stride back), the teacher's recipe, objective "
        "0.5 CE + 0.5 distillation, no gradient clipping (the reference never clips in classification), the teacher "
        "frozen in eval mode (BatchNorm running statistics; the library default, `--teacher_mode eval`), RED blocks at "
        f"the paper placement with BatchNorm and the reference's alpha {settings['red_alpha']:g} (its STL10 setting, the "
        "closest to small data) unless a row says otherwise; the same data order per seed across arms. Top-1 final: "
        f"at the last step; best: the best of {settings['evaluations_per_run']} evaluations (every quarter of the run). "
        "'vs vanilla (paired)': mean ± s.d. over seeds of the per-seed difference to the vanilla student of the same "
        "regime, in points (positive = better than vanilla), then each seed's difference.",
        "",
        f"Regime (a) is the paper's: every student from scratch (`--student_init random`, as the reference code), "
        f"{settings['scratch_steps']} steps like the teacher, seeds {seeds.get('scratch')}. Regime (b) is what a user "
        f"with a trained teacher does, not the paper's experiment: students initialised from the teacher's weights "
        f"(`--student_init teacher`; RED rows and student_plus with identity-initialised RED blocks, `--red_init "
        f"identity`) for {settings['finetune_steps']} steps, seeds {seeds.get('finetune')}. {settings.get('note', '')}",
    ]
    for regime, title in REGIMES.items():
        chosen = [r for r in rows if r["regime"] == regime]
        if not chosen:
            continue
        steps = settings["scratch_steps"] if regime == "scratch" else settings["finetune_steps"]
        table = []
        for r in ([teacher] if teacher else []) + chosen:
            table.append(
                [
                    r["model"],
                    len(r["seeds"]) if r["regime"] != "teacher" else "-",
                    r.get("steps"),
                    _pct(r.get("top1_mean"), r.get("top1_std")),
                    _paired(r),
                    _pct(r.get("best_top1_mean"), r.get("best_top1_std")),
                    _paired(r, "best_top1"),
                    fmt_bytes(r.get("peak_bytes_exact")),
                    f"{teacher_peak / r['peak_bytes_exact']:.2f}x"
                    if teacher_peak and r.get("peak_bytes_exact")
                    else "-",
                    fmt_bytes(r.get("peak_bytes_paper")),
                    f"{r['params'] / 1e6:.3f} M" if r.get("params") else "-",
                    None if r.get("seconds_per_step") is None else round(r["seconds_per_step"], 3),
                    None if r.get("step_time_vs_vanilla") is None else f"{r['step_time_vs_vanilla']:.2f}x",
                ]
            )
        text += ["", f"#### {title} ({steps} steps)", "", markdown_table(header, table)]
    return "\n".join(text)


def _summary(rows: list[dict[str, Any]]) -> str:
    teacher = next((r for r in rows if r["regime"] == "teacher"), {})
    parts = []
    for regime, title in REGIMES.items():
        chosen = [r for r in rows if r["regime"] == regime and r.get("top1_mean") is not None]
        if not chosen:
            continue
        best = max(chosen, key=lambda r: r["top1_mean"])
        text = f"{title}: best student {best['model']} at {100 * best['top1_mean']:.2f}% top-1"
        red = [r for r in chosen if r["distiller"].startswith("red")]
        others = [r for r in chosen if not r["distiller"].startswith("red") and r["model"] != "vanilla"]
        if red:
            best_red = max(red, key=lambda r: r["top1_mean"])
            text += f"; best RED row {best_red['model']} {100 * best_red['top1_mean']:.2f}%"
            if best_red.get("top1_diff_mean") is not None:
                text += f", {_paired(best_red)} points vs vanilla (paired)"
            if others:
                beaten = [r["model"] for r in others if best_red["top1_mean"] > r["top1_mean"]]
                top = max(others, key=lambda r: r["top1_mean"])
                text += (
                    f", above {', '.join(beaten) or 'no other baseline'}; best other baseline {top['model']} "
                    f"{100 * top['top1_mean']:.2f}%"
                )
        parts.append(text)
    ratios = sorted(
        {round(r["ratio_exact"], 2) for r in rows if r["regime"] != "teacher" and r.get("ratio_exact")}
    )
    memory = ""
    if ratios:
        span = (
            f"{ratios[0]:.1f}x"
            if len(ratios) == 1
            else f"{ratios[0]:.1f}x (with RED blocks) to {ratios[-1]:.1f}x"
        )
        memory = f" (student exact peak memory {span} below the teacher's"
        memory += (
            f"; teacher {100 * teacher['top1_mean']:.2f}% top-1)"
            if teacher.get("top1_mean") is not None
            else ")"
        )
    return (
        "Classification" + memory + ": " + "; ".join(parts) + "."
        if parts
        else "Classification: no student evaluated yet."
    )


def paper_commands(output_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The paper's ImageNet ResNet18 comparison (the shipped recipe, one run per distiller): run one after another
    on this machine's GPUs, or with ``dry_run`` only listed."""
    records, outputs = [], {}
    for distiller in DISTILLERS:
        out = f"outputs/paper/imagenet_resnet18_{distiller.replace('+', '_')}"
        outputs[distiller] = REPO_ROOT / out
        argv = [
            "accelerate",
            "launch",
            "examples/train_classifier_redistill.py",
            "--recipe",
            PAPER_RECIPE,
            "--distiller",
            distiller,
            "--output_dir",
            out,
        ]
        records.append(CommandRecord(name=distiller, argv=argv))
    status, failures = run_paper_commands("classification", records, output_dir / "logs", dry_run)
    markdown = (
        f"The paper's ImageNet ResNet18 protocol is `{PAPER_RECIPE}` (pretrained torchvision ResNet18 teacher, student "
        "strides 8-11221, SGD lr 0.2, 300 epochs, RED cosine alpha 1); each baseline swaps `--distiller`. Published top-1 "
        "(the paper: published results): teacher 69.75, aggressive-pool student 61.79, ReviewKD 63.30, MLLD 64.66, RED 65.23."
    )
    finished = {
        d: json.loads((o / "results.json").read_text())
        for d, o in outputs.items()
        if (o / "results.json").is_file()
    }
    if not dry_run and finished:
        rows = [
            [
                d,
                _metric(r, "top1"),
                fmt_bytes(_peak_bytes(r, "exact", "student")),
            ]
            for d, r in finished.items()
        ]
        markdown += "\n\n" + markdown_table(["distiller", "top-1", "student peak memory (exact)"], rows)
    return part_result(
        "classification",
        "paper",
        status=status,
        reason="--dry_run: commands listed, not run." if dry_run else ("; ".join(failures) or None),
        commands=[r.to_dict() for r in records],
        markdown=markdown,
    )


__all__ = ["BUDGETS", "run"]
