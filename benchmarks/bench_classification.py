"""Part 2: classification on CIFAR-10. One teacher, one aggressively downsampled student, every distiller.

Every run is `examples/train_classifier_redistill.py` (a logged subprocess) with the same data, budget
and seed(s); the numbers come from the ``results.json`` each run writes (top-1 on the held-out slice
or ``--eval_data``, peak memory from `redistill_diffusion.memory`, parameters, seconds per step).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    CommandFailed,
    CommandRecord,
    ComponentMissing,
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
# Run order: the method and the plain student first, so a budget cut short still answers the question.
DISTILLERS = ("vanilla", "red", "red+kd", "kd", "dkd", "fitnet", "at", "student_plus")
VALIDATION_PER_CLASS = 500  # 5,000 held-out images, 500 per CIFAR-10 class


@dataclass
class ClassificationBudget:
    architecture: str
    timm_model_args: dict[str, Any]
    stem_stride: int
    train_batch_size: int
    teacher_epochs: float  # fractional epochs become max_train_steps
    student_epochs: float
    learning_rate: float
    seeds: tuple[int, ...]
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    mixed_precision: str = "bf16"
    threads: int = 2
    red_alpha: float | None = None
    distillers: tuple[str, ...] = DISTILLERS
    synthetic: bool = False
    extra_variants: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


BUDGETS: dict[str, ClassificationBudget] = {
    "smoke": ClassificationBudget(
        architecture="resnet18",
        timm_model_args={"channels": [8, 16, 16, 16], "stem_width": 8, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        train_batch_size=16,
        teacher_epochs=0.25,
        student_epochs=0.125,
        learning_rate=0.05,
        seeds=(0,),
        mixed_precision="no",
        distillers=("red+kd",),
        synthetic=True,
    ),
    "cpu": ClassificationBudget(
        # Sized for this 2-core machine when idle (~0.2 s per teacher step, ~0.15 s per student step).
        architecture="resnet18",
        timm_model_args={"channels": [32, 64, 128, 256], "stem_width": 32, "layers": [1, 1, 1, 1]},
        stem_stride=4,
        train_batch_size=64,
        teacher_epochs=3000 * 64 / 45000,  # 3,000 steps
        student_epochs=600 * 64 / 45000,  # 600 steps
        learning_rate=0.05,
        seeds=(0, 1),
        extra_variants=[
            ("red (alpha 50)", "red", {"red_alpha": 50}),
            ("red (identity init)", "red", {"red_init": "identity"}),
        ],
    ),
}

PAPER_RECIPE = "recipes/cls_imagenet_resnet18_red.yaml"


def _steps(epochs: float, num_train: int, batch: int) -> int:
    return max(1, int(round(epochs * num_train / batch)))


def _common_flags(spec: ClassificationBudget, train_data: Path, eval_data: Path, out: Path, steps: int, seed: int) -> list[Any]:
    flags: list[Any] = [
        "--dataset_name", relative(train_data),
        "--eval_data", relative(eval_data),
        "--resolution", 32,
        "--train_batch_size", spec.train_batch_size,
        "--max_train_steps", steps,
        "--optimizer", "sgd",
        "--learning_rate", spec.learning_rate,
        "--sgd_nesterov",
        "--sgd_weight_decay", 5e-4,
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", max(1, steps // 20),
        "--use_ema", "False",
        "--mixed_precision", spec.mixed_precision,
        "--checkpointing_steps", 0,
        "--logger", "none",
        "--train_crop_scale_min", 0.35,
        "--color_jitter", 0,
        "--eval_crop_pct", 1.0,
        "--eval_batch_size", 500,
        "--seed", seed,
        "--output_dir", relative(out),
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
    stamp = out / "benchmark_run.json"
    if not (out / "results.json").is_file() or not stamp.is_file():
        return None
    saved = json.loads(stamp.read_text())
    return saved if saved.get("argv") == [str(a) for a in argv[1:]] else None


def _train(name: str, argv: list[str], out: Path, log_dir: Path, spec: ClassificationBudget, reuse: bool) -> dict[str, Any]:
    previous = _reusable(out, argv) if reuse else None
    if previous is not None:
        return previous | {"reused": True, "results": _read_results(out)}
    record = CommandRecord(name=name, argv=argv)
    run_logged(record, log_dir / f"classification_{slug(name)}.log", threads=spec.threads)
    info = {"argv": [str(a) for a in argv[1:]], "command": record.to_dict()}
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

        train_data, held_out = synthetic_parquet(work_dir, 256, 32)
    else:
        train_data, held_out = stratified_slices(data, work_dir, VALIDATION_PER_CLASS)
    evaluation = eval_data or held_out
    seeds = tuple(seeds) if seeds else spec.seeds
    num_train = _num_rows(train_data) if spec.max_train_samples is None else min(spec.max_train_samples, _num_rows(train_data))
    teacher_steps = _steps(spec.teacher_epochs, num_train, spec.train_batch_size)
    student_steps = _steps(spec.student_epochs, num_train, spec.train_batch_size)
    work = work_dir / "classification"
    log_dir = output_dir / "logs"
    result = part_result(
        "classification", budget, status="running",
        budget_settings={
            "architecture": spec.architecture, "timm_model_args": spec.timm_model_args, "stem_stride": spec.stem_stride,
            "train_batch_size": spec.train_batch_size, "teacher_steps": teacher_steps, "student_steps": student_steps,
            "train_images": num_train, "eval_data": relative(evaluation), "seeds": list(seeds),
            "mixed_precision": spec.mixed_precision, "learning_rate": spec.learning_rate,
        },
    )
    commands = result["commands"]

    teacher_dir = work / "teacher"
    teacher_argv = python_argv(
        SCRIPT, "--model_name_or_path", spec.architecture, "--cifar_stem", "--timm_model_args", json.dumps(spec.timm_model_args, separators=(",", ":")),
        "--distiller", "none", *_common_flags(spec, train_data, evaluation, teacher_dir, teacher_steps, seeds[0]),
    )
    try:
        teacher = _train("teacher", teacher_argv, teacher_dir, log_dir, spec, reuse_runs)
    except CommandFailed as error:
        return not_run("classification", budget, f"teacher training failed: {error}", commands=commands)
    commands.append(teacher["command"] | ({"name": "teacher (reused from an earlier identical run)"} if teacher["reused"] else {}))

    variants = [(d, d, {}) for d in spec.distillers] + list(spec.extra_variants)
    runs: dict[str, list[dict[str, Any]]] = {}
    failures = []
    # Seeds outermost: a run cut short still has every distiller at the first seed.
    for seed in seeds:
        for label, distiller, flags in variants:
            out = work / "students" / f"{slug(label)}_seed{seed}"
            argv = python_argv(
                SCRIPT, "--teacher_model_name_or_path", relative(teacher_dir), "--stem_stride", spec.stem_stride,
                "--student_init", "teacher", "--distiller", distiller, "--distill_weight", 0.5,
                *[x for k, v in flags.items() for x in (f"--{k}", v)],
                *(["--red_alpha", spec.red_alpha] if spec.red_alpha is not None and "red" in distiller else []),
                *_common_flags(spec, train_data, evaluation, out, student_steps, seed),
            )
            try:
                info = _train(f"{label} seed {seed}", argv, out, log_dir, spec, reuse=reuse_runs)
                commands.append(info["command"] | ({"name": f"{label} seed {seed} (reused from an earlier identical run)"} if info["reused"] else {}))
                runs.setdefault(label, []).append(info)
            except CommandFailed as error:
                failures.append(str(error))
            _publish(result, teacher, runs, student_steps, spec, num_train, failures, output_dir)
    result["status"] = "ok" if not failures else ("partial" if runs else "not run")
    _publish(result, teacher, runs, student_steps, spec, num_train, failures, output_dir)
    return result


def _publish(result, teacher, runs, student_steps, spec, num_train, failures, output_dir: Path) -> None:
    """Rows and table so far, written after every run: a run cut short still reports what finished."""
    rows = _rows(teacher, runs, student_steps, spec.train_batch_size, num_train)
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


def _row(label: str, infos: list[dict[str, Any]], steps: int, batch: int, num_train: int) -> dict[str, Any]:
    top1 = [_metric(i["results"], "top1") for i in infos]
    top1 = [t for t in top1 if t is not None]
    memory = infos[0]["results"].get("peak_memory") or {}
    sps = [i["results"].get("seconds_per_step") for i in infos if i["results"].get("seconds_per_step")]
    walls = [(i.get("command") or {}).get("wall_s") for i in infos if (i.get("command") or {}).get("wall_s")]
    steps_per_epoch = num_train / batch
    return {
        "model": label,
        "seeds": len(infos),
        "top1_mean": statistics.mean(top1) if top1 else None,
        "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
        "top1_all": top1,
        "params": infos[0]["results"].get("params"),
        "peak_bytes_exact": (memory.get("exact") or {}).get("student_peak_bytes"),
        "peak_bytes_paper": (memory.get("paper") or {}).get("student_peak_bytes"),
        "teacher_peak_bytes_exact": (memory.get("exact") or {}).get("teacher_peak_bytes"),
        "teacher_peak_bytes_paper": (memory.get("paper") or {}).get("teacher_peak_bytes"),
        "ratio_exact": (memory.get("exact") or {}).get("ratio"),
        "seconds_per_step": statistics.mean(sps) if sps else None,
        "seconds_per_epoch": statistics.mean(sps) * steps_per_epoch if sps else None,
        "wall_s": statistics.mean(walls) if walls else None,
        "steps": steps,
    }


def _rows(teacher: dict[str, Any], runs: dict[str, list[dict[str, Any]]], steps: int, batch: int, num_train: int) -> list[dict[str, Any]]:
    t = teacher["results"]
    teacher_row = {
        "model": "teacher",
        "seeds": 1,
        "top1_mean": _metric(t, "top1"),
        "top1_std": None,
        "top1_all": [_metric(t, "top1")],
        "params": t.get("params"),
        "seconds_per_step": t.get("seconds_per_step"),
        "seconds_per_epoch": t["seconds_per_step"] * num_train / batch if t.get("seconds_per_step") else None,
        "wall_s": (teacher.get("command") or {}).get("wall_s"),
        "steps": t.get("global_step"),
    }
    rows = [teacher_row] + [_row(label, infos, steps, batch, num_train) for label, infos in runs.items()]
    # The teacher's peak memory is measured by every student run (compare(teacher, student)).
    for row in rows[1:]:
        if row.get("teacher_peak_bytes_exact"):
            teacher_row["peak_bytes_exact"] = row["teacher_peak_bytes_exact"]
            teacher_row["peak_bytes_paper"] = row["teacher_peak_bytes_paper"]
            break
    return rows


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    def top1(row):
        if row["top1_mean"] is None:
            return "-"
        text = f"{100 * row['top1_mean']:.2f}"
        if row.get("top1_std") is not None:
            text += f" ± {100 * row['top1_std']:.2f}"
        return text

    teacher_peak = rows[0].get("peak_bytes_exact")
    table = [
        [
            r["model"], top1(r), fmt_bytes(r.get("peak_bytes_exact")),
            f"{teacher_peak / r['peak_bytes_exact']:.2f}x" if teacher_peak and r.get("peak_bytes_exact") else "-",
            fmt_bytes(r.get("peak_bytes_paper")),
            f"{r['params'] / 1e6:.3f} M" if r.get("params") else "-",
            None if r.get("seconds_per_epoch") is None else round(r["seconds_per_epoch"], 1),
            None if r.get("seconds_per_step") is None else round(r["seconds_per_step"], 3),
        ]
        for r in rows
    ]
    args = settings["timm_model_args"]
    text = [
        f"Teacher: timm {settings['architecture']} with a CIFAR stem (3x3 stride 1, no max-pool), channels "
        f"{args.get('channels')}, blocks {args.get('layers')}, trained {settings['teacher_steps']} steps. Student: the same "
        f"network with stem stride {settings['stem_stride']} (the deepest stride-2 stages give the stride back), initialised "
        f"from the teacher, {settings['student_steps']} steps for every distiller, batch {settings['train_batch_size']}, "
        f"SGD lr {settings['learning_rate']} cosine, {settings['mixed_precision']} autocast, seeds {settings['seeds']}; "
        f"{settings['train_images']} training images; top-1 on {settings['eval_data']}. Objective 0.5 CE + 0.5 distillation.",
        "",
        markdown_table(
            ["model", "top-1 % (mean ± s.d. over seeds)", "peak memory (exact)", "teacher / model", "peak memory (paper conv.)", "params", "s / epoch", "s / step"],
            table,
        ),
    ]
    return "\n".join(text)


def _summary(rows: list[dict[str, Any]]) -> str:
    by = {r["model"]: r for r in rows}
    teacher = by.get("teacher", {})
    lines = []
    for red_name in ("red", "red+kd"):
        red = by.get(red_name)
        if red is None or red.get("top1_mean") is None:
            continue
        others = {m: r for m, r in by.items() if m in DISTILLERS and not m.startswith("red") and r.get("top1_mean") is not None}
        best = max(others.items(), key=lambda kv: kv[1]["top1_mean"], default=(None, None))
        beaten = [m for m, r in others.items() if red["top1_mean"] > r["top1_mean"]]
        lines.append(
            f"{red_name}: {100 * red['top1_mean']:.2f}% top-1 (teacher {100 * (teacher.get('top1_mean') or 0):.2f}%), "
            f"above {', '.join(beaten) or 'no other method'}"
            + (f"; best baseline {best[0]} at {100 * best[1]['top1_mean']:.2f}%" if best[0] else "")
        )
    ablations = [f"{m} {100 * r['top1_mean']:.2f}%" for m, r in by.items() if m.startswith("red (") and r.get("top1_mean") is not None]
    if ablations:
        lines.append("RED variants tried: " + ", ".join(ablations))
    ratios = sorted({round(r["ratio_exact"], 2) for r in rows if r["model"] != "teacher" and r.get("ratio_exact")})
    memory = ""
    if ratios:
        span = f"{ratios[0]:.1f}x" if len(ratios) == 1 else f"{ratios[0]:.1f}x (with RED blocks) to {ratios[-1]:.1f}x"
        memory = f" (student exact peak memory {span} below the teacher's)"
    return "Classification" + memory + ": " + "; ".join(lines) + "." if lines else "Classification: RED was not evaluated."


def paper_commands(output_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The paper's ImageNet ResNet18 comparison (the shipped recipe, one run per distiller): run one after another
    on this machine's GPUs, or with ``dry_run`` only listed."""
    records, outputs = [], {}
    for distiller in DISTILLERS:
        out = f"outputs/paper/imagenet_resnet18_{distiller.replace('+', '_')}"
        outputs[distiller] = REPO_ROOT / out
        argv = ["accelerate", "launch", "examples/train_classifier_redistill.py", "--recipe", PAPER_RECIPE,
                "--distiller", distiller, "--output_dir", out]
        records.append(CommandRecord(name=distiller, argv=argv))
    status, failures = run_paper_commands("classification", records, output_dir / "logs", dry_run)
    markdown = (
        f"The paper's ImageNet ResNet18 protocol is `{PAPER_RECIPE}` (pretrained torchvision ResNet18 teacher, student "
        "strides 8-11221, SGD lr 0.2, 300 epochs, RED cosine alpha 1); each baseline swaps `--distiller`. Published top-1 "
        "(method.md section 7): teacher 69.75, aggressive-pool student 61.79, ReviewKD 63.30, MLLD 64.66, RED 65.23."
    )
    finished = {d: json.loads((o / "results.json").read_text()) for d, o in outputs.items() if (o / "results.json").is_file()}
    if not dry_run and finished:
        rows = [[d, _metric(r, "top1"), fmt_bytes(((r.get("peak_memory") or {}).get("exact") or {}).get("student_peak_bytes"))]
                for d, r in finished.items()]
        markdown += "\n\n" + markdown_table(["distiller", "top-1", "student peak memory (exact)"], rows)
    return part_result(
        "classification", "paper", status=status,
        reason="--dry_run: commands listed, not run." if dry_run else ("; ".join(failures) or None),
        commands=[r.to_dict() for r in records], markdown=markdown,
    )


__all__ = ["BUDGETS", "run"]
