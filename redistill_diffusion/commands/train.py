"""`redistill train KIND [flags]`: the training scripts as one command (single process).

    redistill train ddpm --recipe recipes/ddpm_cifar10_redistill.yaml --max_train_steps 1000
    redistill train ddpm-teacher --model_config_name_or_path tiny-ddpm-32 --dataset_name redistill:shapes
    redistill train classifier --recipe recipes/cls_cifar10_student_cpu.yaml

Every flag after KIND goes to the script's parser (`redistill train ddpm --help` lists them). For
several processes run the same thing under accelerate:
``accelerate launch --multi_gpu -m redistill_diffusion.cli train ddpm ...`` or the example scripts.
"""

from __future__ import annotations

import argparse
import importlib

# kind -> (module, function, help); functions take argv and return a TrainResult.
KINDS = {
    "ddpm": (
        "redistill_diffusion.diffusion.run",
        "run_redistill",
        "distil a ReDistill DDPM student from a teacher",
    ),
    "ddpm-teacher": (
        "redistill_diffusion.diffusion.run",
        "run_teacher",
        "train a plain DDPM UNet (a teacher)",
    ),
    "classifier": (
        "redistill_diffusion.classification.run",
        "run_classifier",
        "train or distil a timm classifier",
    ),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a DDPM student/teacher or a classifier (flags as in examples/*.py, --recipe YAML)",
        description="\n".join(f"{kind}: {text}" for kind, (_, _, text) in KINDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("kind", choices=sorted(KINDS), nargs="?", help="what to train")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="flags for the training script")
    parser.add_argument(
        "-h", "--help", action="store_true", help="show this help (after KIND: the script's flags)"
    )
    parser.set_defaults(func=run, _train_parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.kind is None:
        args._train_parser.print_help()
        return 0 if args.help else 2
    module_name, function_name, _ = KINDS[args.kind]
    run_function = getattr(importlib.import_module(module_name), function_name)
    argv = list(args.script_args) + (["--help"] if args.help else [])
    result = run_function(argv)
    print(f"Finished at step {result.global_step}; outputs in {result.output_dir}")
    return 0
