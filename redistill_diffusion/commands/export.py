"""`redistill export`: a saved teacher or student folder -> ONNX / ExecuTorch files checked against eager PyTorch.

    redistill export outputs/cifar10-student --format onnx executorch --output_dir outputs/cifar10-student/deploy
    redistill export runs/cifar10_student --format onnx            # a classifier folder

Needs the optional extra: pip install 'redistill-diffusion[deploy]'. See docs/deploy.md.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..deploy.extras import BACKENDS, FORMATS  # no torch import: the parser stays quick to build

    parser = subparsers.add_parser(
        "export",
        help="export a saved pipeline/UNet/classifier folder to ONNX and/or ExecuTorch, checked against eager",
        description=(
            "Export the denoiser UNet of a saved DDPM pipeline folder (or a UNet folder), or a saved classifier "
            "folder, to ONNX (run with onnxruntime) and/or ExecuTorch (.pte). Each file is run in its runtime "
            "on fixed inputs and compared with eager PyTorch before it is kept; denoisers are also sampled "
            "(DDIM and DDPM, same seed) through the file and through the eager UNet. Writes model.onnx / "
            "model.pte and export_report.json."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("folder", help="a saved DDPM pipeline folder, a UNet folder or a classifier folder")
    parser.add_argument(
        "--format", dest="formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="default: both"
    )
    parser.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", default=None, help="default: FOLDER/deploy"
    )
    parser.add_argument(
        "--batch_size",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=1,
        help="ExecuTorch programs have a fixed batch (default 1); ONNX files take any batch",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="xnnpack", help="ExecuTorch kernels (default xnnpack)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace model files already in --output_dir"
    )
    parser.add_argument(
        "--no_sampling_check",
        "--no-sampling-check",
        dest="check_sampling",
        action="store_false",
        help="skip the DDIM/DDPM sampling comparison of a denoiser",
    )
    parser.add_argument(
        "--update_card",
        "--update-card",
        dest="update_card",
        action="store_true",
        help="write a Deployment section (runtimes checked, figures) into FOLDER/README.md",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.api import REPORT_NAME, export_model

    report = export_model(
        args.folder,
        args.output_dir,
        tuple(dict.fromkeys(args.formats)),
        batch_size=args.batch_size,
        backend=args.backend,
        overwrite=args.overwrite,
        check_sampling=args.check_sampling,
        update_card=args.update_card,
    )
    for entry in report["files"]:
        for check in entry.get("sampling") or []:
            print(
                f"{entry['path']}: {check['sampler']} {check['steps']} steps, {check['samples']} images, same seed: "
                f"max difference {check['max_abs_difference']:.2e} ({check['max_uint8_difference']} uint8 levels)"
            )
    print(f"report: {args.output_dir or args.folder + '/deploy'}/{REPORT_NAME}")
    return 0
