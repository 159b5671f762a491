"""The frozen teacher's memory layout: its forward (run at every distillation step) in the default layout and in
channels_last, the layout `redistill_diffusion.training.task.freeze_teacher` gives it.

    python benchmarks/bench_teacher_layout.py          # ~1 min at 1 thread; writes benchmarks/results/teacher_layout.json
    python benchmarks/bench_teacher_layout.py --smoke --output_dir /tmp/t

Teachers: the classification benchmark's narrow ResNet18 (batch 128, as it trains) and the CIFAR-10 parity DDPM
UNet (batch 32, random timesteps), built from their committed configs with random weights (the speed of a forward
does not depend on the weight values). Each is timed in both layouts, bf16 autocast and fp32, round-robin in one
process (a burst of load from another process hits every case alike): warm-up, then ``--repeats`` rounds of
``--steps`` forwards; the figure is the median round. ``max |diff|`` is the largest difference between the two
layouts' outputs, relative to the output's largest magnitude.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    check_timing_args,
    markdown_table,
    part_result,
    relative,
    round_robin_times,
    timing_parser,
    write_json,
)

RESULTS_NAME = "teacher_layout.json"


def build_teachers(smoke: bool) -> dict[str, tuple[Any, tuple]]:
    """name -> (teacher module, forward inputs), as the benchmarks distil from them."""
    import torch
    from bench_classification import RECIPES
    from bench_parity import TEACHER_UNET
    from diffusers import UNet2DModel

    from redistill_diffusion.classification import create_teacher

    generator = torch.Generator().manual_seed(0)
    recipe = RECIPES["smoke" if smoke else "cpu"]
    classifier = create_teacher(
        "resnet18", num_classes=10, cifar_stem=True, input_size=(3, 32, 32), **recipe.timm_model_args
    )
    batch = 8 if smoke else recipe.train_batch_size
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    config = {k: v for k, v in TEACHER_UNET.items() if not k.startswith("_")}
    if smoke:
        config.update(block_out_channels=(8, 16, 16), norm_num_groups=4)
    unet = UNet2DModel(**config)
    batch = 4 if smoke else 32
    noisy = torch.randn(batch, 3, 32, 32, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return {
        f"classification teacher (timm resnet18 {recipe.timm_model_args['channels']}), batch {len(images)}": (
            classifier,
            (images,),
        ),
        f"parity DDPM teacher (UNet {tuple(config['block_out_channels'])}), batch {batch}": (
            unet,
            (noisy, timesteps),
        ),
    }


def _output(result: Any):
    return result.sample if hasattr(result, "sample") else result


def measure(
    teachers: dict[str, tuple[Any, tuple]], steps: int, repeats: int, warmup: int
) -> list[dict[str, Any]]:
    import torch

    from redistill_diffusion.training.task import freeze_teacher

    jobs: dict[tuple[str, str, str], Any] = {}
    outputs: dict[tuple[str, str], Any] = {}
    for name, (model, inputs) in teachers.items():
        default = model.eval().requires_grad_(False)
        frozen = copy.deepcopy(model)
        freeze_teacher(frozen)
        for layout, module in (("default", default), ("channels_last", frozen)):
            for precision in ("bf16", "fp32"):

                def forward(module=module, inputs=inputs, precision=precision):
                    autocast = (
                        torch.autocast("cpu", dtype=torch.bfloat16)
                        if precision == "bf16"
                        else contextlib.nullcontext()
                    )
                    with torch.no_grad(), autocast:
                        return _output(module(*inputs))

                jobs[(name, layout, precision)] = forward
            with torch.no_grad():
                outputs[(name, layout)] = _output(module(*inputs)).float()
    times = round_robin_times(jobs, steps, repeats, warmup)
    rows = []
    for name in teachers:
        reference = outputs[(name, "default")]
        diff = (outputs[(name, "channels_last")] - reference).abs().max() / reference.abs().max()
        for precision in ("bf16", "fp32"):
            default = statistics.median(times[(name, "default", precision)])
            last = statistics.median(times[(name, "channels_last", precision)])
            rows.append(
                {
                    "teacher": name,
                    "precision": precision,
                    "default_s": default,
                    "channels_last_s": last,
                    "speedup": default / last,
                    "max_rel_diff_fp32": diff.item(),
                    "default_s_all": times[(name, "default", precision)],
                    "channels_last_s_all": times[(name, "channels_last", precision)],
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    header = [
        "teacher",
        "precision",
        "default layout (s / forward)",
        "channels_last",
        "speed-up",
        "max |diff|",
    ]
    table = [
        [
            r["teacher"],
            r["precision"],
            f"{r['default_s']:.4f}",
            f"{r['channels_last_s']:.4f}",
            f"{r['speedup']:.2f}x",
            f"{r['max_rel_diff_fp32']:.1e}",
        ]
        for r in rows
    ]
    text = (
        f"One process, {settings['threads']} torch thread(s); {settings['warmup']} warm-up forwards per case, then "
        f"{settings['repeats']} round-robin rounds of {settings['steps']} forwards; the median round. max |diff|: "
        "the two layouts' fp32 outputs, relative to the largest output. "
        f"{settings.get('machine_note', '')}"
    )
    return text.strip() + "\n\n" + markdown_table(header, table)


def main(argv: list[str] | None = None) -> int:
    parser = timing_parser(__doc__, "timed forwards per round", "tiny models (checks the harness)")
    args = parser.parse_args(argv)
    output_dir = check_timing_args(parser, args, ("threads", "steps", "repeats"))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    print("timing the teachers' forwards in both layouts ...", flush=True)
    rows = measure(build_teachers(args.smoke), args.steps, args.repeats, args.warmup)
    settings = {
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine_note": args.machine_note,
    }
    result = part_result(
        "teacher_layout",
        "smoke" if args.smoke else "cpu",
        settings=settings,
        rows=rows,
        markdown=markdown(rows, settings),
        entry_command="python "
        + " ".join([relative(__file__), *(argv if argv is not None else sys.argv[1:])]),
        total_wall_s=round(time.perf_counter() - start, 1),
    )
    path = output_dir / "results" / RESULTS_NAME
    write_json(path, result)
    print(result["markdown"])
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
