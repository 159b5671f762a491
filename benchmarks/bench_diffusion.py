"""Part 3: diffusion on CIFAR-10. A small DDPM teacher, then its stem-stride-2 student under every distiller.

Everything runs through the project's own entry points: `examples/train_ddpm_teacher.py` and
`examples/train_ddpm_redistill.py` (subprocesses, logged) and `redistill_diffusion.evaluation.
evaluate_pipelines` (torch-fidelity). Frechet distance and IS are computed on the CIFAR-10 teacher
classifier of part 2 ("FD-<classifier>", never called FID); Inception FID only where torch-fidelity's
Inception weights exist locally.
"""

from __future__ import annotations

import json
import re
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

TEACHER_SCRIPT = REPO_ROOT / "examples/train_ddpm_teacher.py"
STUDENT_SCRIPT = REPO_ROOT / "examples/train_ddpm_redistill.py"
# Run order: the method and the plain student first, so a budget cut short still answers the question.
DISTILLERS = ("vanilla", "red", "output_mse", "red+output_mse", "student_plus", "fitnet")
VALIDATION_PER_CLASS = 500  # the images part 2 holds out; never trained on here either
REFERENCE_IMAGES = 5000


@dataclass
class Variant:
    """One student run: a label for the table, the distiller and any extra flags (ablations)."""

    label: str
    distiller: str
    flags: dict[str, Any] = field(default_factory=dict)
    stem_stride: int = 2
    steps: int | None = None  # default: the budget's student_steps (the row label must say when it differs)


@dataclass
class DiffusionBudget:
    teacher_unet: dict[str, Any]
    train_batch_size: int
    teacher_steps: int
    student_steps: int
    learning_rate: float
    warmup_steps: int
    ema_max_decay: float
    num_samples: int
    ddim_steps: int
    eval_batch_size: int
    mixed_precision: str = "bf16"
    threads: int = 2
    variants: list[Variant] = field(default_factory=lambda: [Variant(d, d) for d in DISTILLERS])
    synthetic: bool = False  # smoke: coloured shapes, no CIFAR-10 needed
    synthetic_images: int = 256


def _unet(channels, attention_level=None, layers=1, sample_size=32, groups=8) -> dict[str, Any]:
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention_level is not None:
        down[attention_level] = "AttnDownBlock2D"
        up[len(channels) - 1 - attention_level] = "AttnUpBlock2D"
    return {
        "_class_name": "UNet2DModel",
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": list(channels),
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": groups,
        "attention_head_dim": None if attention_level is None else 8,
    }


BUDGETS: dict[str, DiffusionBudget] = {
    "smoke": DiffusionBudget(
        teacher_unet=_unet((8, 16, 16), sample_size=16, groups=4),
        train_batch_size=8,
        teacher_steps=3,
        student_steps=2,
        learning_rate=2e-4,
        warmup_steps=0,
        ema_max_decay=0.99,
        num_samples=16,
        ddim_steps=3,
        eval_batch_size=16,
        mixed_precision="no",
        variants=[Variant("red", "red")],
        synthetic=True,
        synthetic_images=64,
    ),
    "cpu": DiffusionBudget(
        # Sized for this 2-core machine when idle (~0.2 s per teacher step, ~0.2 s per distillation step).
        teacher_unet=_unet((32, 64, 64)),
        train_batch_size=32,
        teacher_steps=3000,
        student_steps=800,
        learning_rate=1e-3,
        warmup_steps=100,
        ema_max_decay=0.999,
        num_samples=1000,
        ddim_steps=25,
        eval_batch_size=100,
        variants=[Variant(d, d) for d in DISTILLERS]
        + [
            Variant("red (mse distance)", "red", {"red_distance": "mse"}),
            Variant("red (full placement)", "red", {"red_preset": "full"}),
            Variant("red (head init from teacher)", "red", {"student_head_init": "teacher"}),
            Variant("red (identity init)", "red", {"red_init": "identity"}),
            # Stem stride 2 leaves the time embedding (a few hundred bytes) at full size, so its exact ratio is a
            # hair under 4x; stride 4 shows what a further 4x of memory costs in quality.
            Variant("vanilla (stem stride 4)", "vanilla", stem_stride=4),
            Variant("red (stem stride 4)", "red", stem_stride=4),
            # Does the ranking move with 3x the steps? The plain student against RED's best-behaved setting.
            Variant("vanilla (2400 steps)", "vanilla", steps=2400),
            Variant("red (identity init, 2400 steps)", "red", {"red_init": "identity"}, steps=2400),
        ],
    ),
}

# The paper's DDPM CIFAR-10 recipe (method.md section 7), for users with GPUs: the google/ddpm-cifar10-32
# teacher from the Hub, 800k steps at batch 128, 50k samples with 1000-step ancestral sampling, Inception FID.
PAPER_RECIPE = "recipes/ddpm_cifar10_redistill.yaml"
PAPER = {
    "teacher": "google/ddpm-cifar10-32",
    "train_batch_size": 128,
    "max_train_steps": 800_000,
    "learning_rate": 2e-4,
    "lr_warmup_steps": 5000,
    "ema_max_decay": 0.9999,
    "num_samples": 50_000,
    "sampler": "ddpm",
    "num_inference_steps": 1000,
}


# ------------------------------------------------------------------------------------------------
# data and models
# ------------------------------------------------------------------------------------------------
def synthetic_parquet(work_dir: Path, num_images: int, resolution: int) -> tuple[Path, Path]:
    """Coloured shapes (the library's offline data) written as CIFAR-style parquet: train and a held-out slice."""
    import datasets
    from PIL import Image

    from redistill_diffusion.data import make_shapes

    train_path, val_path = work_dir / f"shapes{resolution}_train.parquet", work_dir / f"shapes{resolution}_val.parquet"
    if train_path.exists() and val_path.exists():
        return train_path, val_path
    work_dir.mkdir(parents=True, exist_ok=True)
    images, labels = make_shapes(num_images=num_images + num_images // 4, resolution=resolution, seed=0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"img": [Image.fromarray(a) for a in images], "label": [int(x) for x in labels]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.select(range(num_images)).to_parquet(str(train_path))
    dataset.select(range(num_images, len(dataset))).to_parquet(str(val_path))
    return train_path, val_path


def _write_teacher_config(work_dir: Path, unet: dict[str, Any]) -> Path:
    folder = work_dir / "teacher_unet_config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(unet, indent=2) + "\n")
    return folder


def _common_flags(budget: DiffusionBudget, train_data: Path, output_dir: Path, steps: int) -> list[Any]:
    return [
        "--dataset_name", relative(train_data),
        "--resolution", budget.teacher_unet["sample_size"],
        "--random_flip",
        "--train_batch_size", budget.train_batch_size,
        "--max_train_steps", steps,
        "--optimizer", "adamw",
        "--learning_rate", budget.learning_rate,
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", budget.warmup_steps,
        "--ema_max_decay", budget.ema_max_decay,
        "--mixed_precision", budget.mixed_precision,
        "--checkpointing_steps", 0,
        "--logger", "none",
        "--sample_scheduler", "ddim",
        "--ddpm_num_inference_steps", budget.ddim_steps,
        "--eval_batch_size", 16,
        "--seed", 0,
        "--output_dir", relative(output_dir),
        "--overwrite_output_dir",
    ]


_TQDM_DONE = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def training_seconds_per_step(log_path: Path) -> float | None:
    """Seconds per optimizer step of a finished run, from the final tqdm line of its log
    (elapsed loop time / steps: excludes start-up, data loading before the loop and the final save)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    best = None
    for match in _TQDM_DONE.finditer(text):
        done, total = int(match.group(1)), int(match.group(2))
        if done == total and done > 0:
            hours = int(match.group(3) or 0)
            elapsed = hours * 3600 + int(match.group(4)) * 60 + int(match.group(5))
            best = elapsed / done
    return best


def _reusable(output_dir: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run with exactly this recipe, if there is one (pipeline folder present)."""
    stamp = output_dir / "benchmark_run.json"
    if not (output_dir / "model_index.json").is_file() or not stamp.is_file():
        return None
    saved = json.loads(stamp.read_text())
    return saved if saved.get("recipe") == recipe else None


def _train(name: str, argv: list[str], output_dir: Path, log_dir: Path, budget: DiffusionBudget, reuse: bool) -> dict[str, Any]:
    record = CommandRecord(name=name, argv=argv)
    recipe = {"argv": [str(a) for a in argv[1:]]}
    previous = _reusable(output_dir, recipe) if reuse else None
    if previous is not None:
        return previous | {"reused": True}
    log = log_dir / f"diffusion_{slug(name)}.log"
    run_logged(record, log, threads=budget.threads)
    info = {
        "recipe": recipe,
        "command": record.to_dict(),
        "seconds_per_step": training_seconds_per_step(log),
        "reused": False,
    }
    (output_dir / "benchmark_run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _feature_extractor(work_dir: Path, budget_name: str, wait_s: float = 0.0) -> tuple[Any, str]:
    """The teacher classifier of part 2 (its saved folder), or for the smoke budget a random tiny one.

    When part 2 runs beside this part, its teacher may still be training: wait up to ``wait_s``."""
    import time

    folder = work_dir / "classification" / "teacher"
    deadline = time.monotonic() + wait_s
    while not (folder / "config.json").is_file() and time.monotonic() < deadline:
        time.sleep(20)
    if (folder / "config.json").is_file():
        from redistill_diffusion.classification.hub import load_classifier

        return load_classifier(str(folder)).eval(), str(folder)
    if budget_name == "smoke":
        import timm

        return timm.create_model("resnet10t", num_classes=10, pretrained=False).eval(), ""
    raise ComponentMissing(
        f"the CIFAR-10 classifier of part 2 ({relative(folder)}) is missing: run --only classification first"
    )


def _inception_weights() -> str | None:
    """torch-fidelity's Inception weights if they exist locally (never downloaded here)."""
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for candidate in sorted(hub.glob("weights-inception-2015-12-05-*.pth")) if hub.is_dir() else []:
        return str(candidate)
    return None


# ------------------------------------------------------------------------------------------------
# the part
# ------------------------------------------------------------------------------------------------
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
        return paper_commands(output_dir, work_dir, dry_run)
    spec = BUDGETS[budget]
    work = work_dir / "diffusion"
    log_dir = output_dir / "logs"
    try:
        require_file(TEACHER_SCRIPT, "issue 3: DDPM teacher training script")
        require_file(STUDENT_SCRIPT, "issue 3: ReDistill DDPM training script")
    except ComponentMissing as error:
        return not_run("diffusion", budget, str(error))
    if spec.synthetic:
        train_data, reference = synthetic_parquet(work_dir, spec.synthetic_images, spec.teacher_unet["sample_size"])
    else:
        # The same per-class split as part 2 (the parquet is sorted by label, so a tail slice would drop a class).
        train_data, _ = stratified_slices(data, work_dir, VALIDATION_PER_CLASS)
    # As in the paper's protocol, generated images are compared with (a fixed random subset of) the training set.
    reference = train_data

    result = part_result("diffusion", budget, budget_settings=_settings(spec), status="running")
    commands: list[dict[str, Any]] = result["commands"]

    teacher_dir = work / "teacher"
    config_dir = _write_teacher_config(work, spec.teacher_unet)
    teacher_argv = python_argv(
        TEACHER_SCRIPT, "--model_config_name_or_path", relative(config_dir), *_common_flags(spec, train_data, teacher_dir, spec.teacher_steps)
    )
    trained: dict[str, dict[str, Any]] = {}
    try:
        trained["teacher"] = _train("teacher", teacher_argv, teacher_dir, log_dir, spec, reuse_runs) | {"dir": teacher_dir}
    except CommandFailed as error:
        return not_run("diffusion", budget, f"teacher training failed: {error}", commands=commands)
    commands.append(trained["teacher"]["command"] | ({"name": "teacher (reused from an earlier identical run)"} if trained["teacher"]["reused"] else {}))

    evaluator: _Evaluator | None = None
    metrics: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    pending: list[tuple[str, Path]] = [("teacher", teacher_dir)]
    missing: list[str] = []

    def evaluate_pending(wait_s: float = 0.0) -> None:
        """Score every trained, unscored model once the feature extractor (part 2's classifier) exists."""
        nonlocal evaluator
        if evaluator is None:
            try:
                evaluator = _Evaluator(spec, budget, work_dir, reference, output_dir, result, wait_s=wait_s)
            except ComponentMissing as error:
                missing[:] = [str(error)]
                return
        while pending:
            label, folder = pending.pop(0)
            metrics[label] = evaluator.evaluate(label, folder)

    def publish() -> None:
        """Rows, table and plots so far: a run cut short still leaves every finished model in the report."""
        rows = _rows(list(metrics.values()), trained)
        result["rows"] = rows
        result["markdown"] = _markdown(rows, result)
        result["summary"] = _summary(rows)
        if metrics:
            grid = _side_by_side(list(metrics.values()), output_dir / "results" / "diffusion_eval", output_dir / "results" / "diffusion_samples.png")
            result["plots"] = [{"path": str(grid), "title": "Samples: teacher and every student (same seeds)"}]
        if failures:
            result["reason"] = "; ".join(failures)
        write_json(output_dir / "results" / "diffusion.json", result)
        try:
            from report import render

            render(output_dir)
        except Exception as error:  # the report is regenerated at the end anyway
            print(f"[benchmarks] report not rendered: {error}")

    evaluate_pending()
    publish()
    for variant in spec.variants:
        out = work / "students" / slug(variant.label)
        extra = [x for key, value in variant.flags.items() for x in (f"--{key}", value)]
        argv = python_argv(
            STUDENT_SCRIPT,
            "--teacher_model_name_or_path", relative(teacher_dir),
            "--stem_stride", variant.stem_stride,
            "--student_init", "teacher",
            "--distiller", variant.distiller,
            "--red_preset", "paper",
            "--distill_weight", 0.5,
            *extra,
            *_common_flags(spec, train_data, out, variant.steps or spec.student_steps),
        )
        try:
            trained[variant.label] = _train(f"student {variant.label}", argv, out, log_dir, spec, reuse=reuse_runs) | {"dir": out}
            commands.append(trained[variant.label]["command"] | ({"name": f"student {variant.label} (reused from an earlier identical run)"} if trained[variant.label]["reused"] else {}))
        except CommandFailed as error:
            failures.append(str(error))
            publish()
            continue
        pending.append((variant.label, out))
        evaluate_pending()
        publish()
    evaluate_pending(wait_s=3600.0)
    if missing:
        failures.append(f"evaluation not run: {missing[0]}")
    result["status"] = "ok" if not failures else "partial"
    if evaluator is not None:
        commands.append(
            {"name": "evaluation (in-process: redistill_diffusion.evaluation.evaluate_pipelines, one call per model)",
             "command": "see benchmarks/bench_diffusion.py::_Evaluator", "wall_s": round(evaluator.seconds, 1), "returncode": 0, "log": None}
        )
    publish()
    return result


def _settings(spec: DiffusionBudget) -> dict[str, Any]:
    return {
        "teacher_unet": spec.teacher_unet,
        "train_batch_size": spec.train_batch_size,
        "teacher_steps": spec.teacher_steps,
        "student_steps": spec.student_steps,
        "learning_rate": spec.learning_rate,
        "mixed_precision": spec.mixed_precision,
        "num_samples": spec.num_samples,
        "ddim_steps": spec.ddim_steps,
        "variants": [v.__dict__ for v in spec.variants],
    }


class _Evaluator:
    """Scores one pipeline at a time (same seeds, same reference statistics, cached), so results land as runs finish."""

    def __init__(self, spec: DiffusionBudget, budget: str, work_dir: Path, reference: Path, output_dir: Path, result: dict[str, Any], wait_s: float = 0.0):
        import torch

        try:
            from redistill_diffusion.evaluation import evaluate_pipelines, resolve_feature_extractor
        except ImportError as error:
            raise ComponentMissing(f"redistill_diffusion.evaluation unavailable ({error})") from error
        torch.set_num_threads(spec.threads)
        self.evaluate_pipelines = evaluate_pipelines
        self.spec, self.reference, self.work_dir = spec, reference, work_dir
        self.eval_dir = output_dir / "results" / "diffusion_eval"
        model, weights = _feature_extractor(work_dir, budget, wait_s)
        self.extractor = resolve_feature_extractor(model)
        self.inception = _inception_weights()
        self.seconds = 0.0
        result["feature_extractor"] = relative(weights) if weights else "random-weight timm resnet10t (smoke only)"
        if self.inception is None:
            result["notes"].append(
                "FID (Inception) not computed: torch-fidelity's Inception weights are not on this machine and it "
                "has no internet. FD is the Frechet distance on the penultimate features of the part-2 CIFAR-10 "
                "teacher classifier, IS the Inception-Score formula on its 10-class softmax (it measures how confidently "
                "and evenly samples fall into CIFAR-10 classes; max 10), KD the kernel (KID) distance on the same features. "
                "Same formulas as FID/IS/KID, different features: not comparable with published numbers."
            )
        if budget == "smoke":
            result["notes"].append("Smoke budget: synthetic shapes, tiny models and a few steps; the numbers only prove the harness runs.")

    def evaluate(self, label: str, folder: Path) -> dict[str, Any]:
        import time

        spec = self.spec
        start = time.perf_counter()
        common = dict(
            reference=str(self.reference), num_samples=spec.num_samples, sampler="ddim", num_inference_steps=spec.ddim_steps,
            batch_size=spec.eval_batch_size, seed=0, cache_root=str(self.work_dir / "fidelity_cache"), device="cpu",
            reference_max_images=REFERENCE_IMAGES,
            mixed_precision=spec.mixed_precision, progress=False,
        )
        (row,) = self.evaluate_pipelines(
            {label: str(folder)}, metrics=("fid", "isc", "kid"), feature_extractor=self.extractor,
            kid_subset_size=min(spec.num_samples, 100), output_dir=str(self.eval_dir), **common,
        )
        # One call per model: its metrics.json / metrics.md would hold only the latest model (diffusion.json has them all).
        for stale in ("metrics.json", "metrics.md"):
            (self.eval_dir / stale).unlink(missing_ok=True)
        if self.inception is not None:
            (extra,) = self.evaluate_pipelines(
                {label: str(folder)}, metrics=("fid",), feature_extractor="inception-v3-compat",
                feature_extractor_weights_path=self.inception, **common,
            )
            row["fid_inception"] = extra.get("fid")
        self.seconds += time.perf_counter() - start
        return row


def _key(metrics: dict[str, Any], prefix: str) -> Any:
    for key, value in metrics.items():
        if key == prefix or (key.startswith(prefix) and not key.endswith("_std")):
            return value
    return None


def _rows(metrics: list[dict[str, Any]], trained: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {m["pipeline"]: m for m in metrics}
    teacher = by_name.get("teacher", {})
    vanilla_step = trained.get("vanilla", {}).get("seconds_per_step")
    rows = []
    for label, info in trained.items():
        m = by_name.get(label, {})
        fd_key = next((k for k in m if k.startswith("fd_") and not k.endswith("_std")), "fid")
        is_key = next((k for k in m if (k.startswith("is_") and k.endswith("_mean")) or k == "isc_mean"), None)
        row = {
            "model": label,
            "fd_key": fd_key,
            "fd": m.get(fd_key),
            "is_mean": m.get(is_key) if is_key else None,
            "is_std": m.get(is_key.replace("mean", "std")) if is_key and "mean" in is_key else None,
            "kid_mean": _key(m, "kd_") if _key(m, "kd_") is not None else m.get("kid_mean"),
            "fid_inception": m.get("fid_inception"),
            "peak_bytes": m.get("peak_bytes"),
            "peak_bytes_paper": m.get("peak_bytes_paper"),
            "images_per_second": m.get("images_per_second"),
            "seconds_per_step": info.get("seconds_per_step"),
            "train_wall_s": (info.get("command") or {}).get("wall_s"),
            "raw_metrics": m,
        }
        if teacher.get("peak_bytes") and row["peak_bytes"]:
            row["memory_ratio_teacher_over_model"] = teacher["peak_bytes"] / row["peak_bytes"]
        if teacher.get("images_per_second") and row["images_per_second"]:
            row["throughput_vs_teacher"] = row["images_per_second"] / teacher["images_per_second"]
        if vanilla_step and row["seconds_per_step"] and label != "teacher":
            row["step_time_vs_vanilla"] = row["seconds_per_step"] / vanilla_step
        rows.append(row)
    return rows


def _side_by_side(metrics: list[dict[str, Any]], eval_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    panels = [(m["pipeline"], eval_dir / m["sample_grid"]) for m in metrics if m.get("sample_grid")]
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, path) in zip(axes.flat, panels):
        ax.imshow(Image.open(path))
        ax.set_title(name, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _markdown(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    settings = result["budget_settings"]
    fd_name = next((r["fd_key"] for r in rows if r.get("fd_key")), "fd")
    header = [
        "model", fd_name.upper().replace("_", "-") + " (lower is better)", "IS (classifier)", "KD/KID",
        "peak memory (exact)", "teacher / model", "peak memory (paper conv.)", "images/s (DDIM)", "vs teacher",
        "train s/step", "vs vanilla",
    ]
    table = []
    for r in rows:
        table.append([
            r["model"], r["fd"], None if r["is_mean"] is None else f"{r['is_mean']:.3f}", r["kid_mean"],
            fmt_bytes(r["peak_bytes"]), None if r.get("memory_ratio_teacher_over_model") is None else f"{r['memory_ratio_teacher_over_model']:.3f}x",
            fmt_bytes(r["peak_bytes_paper"]), r["images_per_second"],
            None if r.get("throughput_vs_teacher") is None else f"{r['throughput_vs_teacher']:.2f}x",
            r["seconds_per_step"], None if r.get("step_time_vs_vanilla") is None else f"{r['step_time_vs_vanilla']:.2f}x",
        ])
    unet = settings["teacher_unet"]
    text = [
        f"Teacher: UNet2DModel {unet['block_out_channels']} ({unet['layers_per_block']} layer/block), trained "
        f"{settings['teacher_steps']} steps at batch {settings['train_batch_size']}; every student (unless its row says "
        f"otherwise): stem stride 2, initialised from the teacher, {settings['student_steps']} steps, same data order and "
        "seed, distill weight 0.5, RED at the paper placement (stem output and output-head input), PyTorch-default RED init. "
        f"Evaluation: {settings['num_samples']} samples, DDIM {settings['ddim_steps']} steps, seed 0, against a fixed random "
        f"subset of {REFERENCE_IMAGES} training images (the paper's protocol compares with the training set). Training data: "
        f"the shared CIFAR-10 parquet minus the {VALIDATION_PER_CLASS} images per class that part 2 holds out.",
        "",
        markdown_table(header, table),
    ]
    return "\n".join(text)


def _summary(rows: list[dict[str, Any]]) -> str:
    by = {r["model"]: r for r in rows}
    red = by.get("red")
    if red is None or red.get("fd") is None:
        return "Diffusion: RED was not evaluated."
    baselines = {m: r for m, r in by.items() if m in DISTILLERS and not m.startswith("red") and r.get("fd") is not None}
    better = [m for m, r in baselines.items() if red["fd"] < r["fd"]]
    worse = [m for m, r in baselines.items() if red["fd"] >= r["fd"]]
    variants = [f"{m} {r['fd']:.3g}" for m, r in by.items() if m.startswith("red") and m != "red" and r.get("fd") is not None]
    ratio = red.get("memory_ratio_teacher_over_model")
    return (
        f"Diffusion (CIFAR-10, stem-stride-2 student, {f'{ratio:.3f}x' if ratio else '?'} lower exact peak memory than the teacher): "
        f"RED's FD {red['fd']:.3g} is lower than {', '.join(better) or 'no baseline'}"
        + (f" and not lower than {', '.join(worse)}" if worse else "")
        + (f" (teacher {by['teacher']['fd']:.3g})" if by.get("teacher", {}).get("fd") is not None else "")
        + (f"; other RED variants: {', '.join(variants)}" if variants else "")
        + _stride4_sentence(by)
        + "."
    )


def _stride4_sentence(by: dict[str, dict[str, Any]]) -> str:
    red, vanilla = by.get("red (stem stride 4)"), by.get("vanilla (stem stride 4)")
    if not red or not vanilla or red.get("fd") is None or vanilla.get("fd") is None:
        return ""
    ratio = red.get("memory_ratio_teacher_over_model")
    return (
        f"; at stem stride 4 ({f'{ratio:.2f}x' if ratio else '?'} lower exact peak) RED {red['fd']:.3g} vs vanilla "
        f"{vanilla['fd']:.3g}"
    )


def paper_commands(output_dir: Path, work_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The paper's DDPM CIFAR-10 comparison (the shipped recipe, one run per distiller, then FID/IS of all):
    run one after another on this machine's GPUs, or with ``dry_run`` only listed."""
    records = []
    outputs = []
    for distiller in DISTILLERS:
        out = f"outputs/paper/ddpm_cifar10_{distiller.replace('+', '_')}"
        outputs.append(out)
        argv = ["accelerate", "launch", "examples/train_ddpm_redistill.py",
                "--recipe", PAPER_RECIPE, "--distiller", distiller, "--output_dir", out]
        records.append(CommandRecord(name=f"student {distiller}", argv=argv))
    eval_dir = Path("outputs/paper/ddpm_cifar10_eval")
    records.append(CommandRecord(
        name="evaluation",
        argv=["redistill", "eval", "--recipe", "recipes/eval_fid_is.yaml", "--pipelines", PAPER["teacher"], *outputs,
              "--output_dir", str(eval_dir)],
    ))
    status, failures = run_paper_commands("diffusion", records, output_dir / "logs", dry_run)
    protocol = (
        f"The paper's DDPM CIFAR-10 protocol is `{PAPER_RECIPE}` + `recipes/eval_fid_is.yaml`: "
        + ", ".join(f"{k} {v}" for k, v in PAPER.items()) + "."
    )
    table = REPO_ROOT / eval_dir / "metrics.md"
    markdown = protocol + ("\n\n" + table.read_text() if not dry_run and table.is_file() else "")
    return part_result(
        "diffusion", "paper", status=status,
        reason="--dry_run: commands listed, not run." if dry_run else ("; ".join(failures) or None),
        commands=[r.to_dict() for r in records], markdown=markdown,
    )
