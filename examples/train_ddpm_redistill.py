"""Distil a ReDistill student (stem stride 2/4/8 + RED blocks) from a DDPM teacher.

    accelerate launch --num_cpu_threads_per_process 2 examples/train_ddpm_redistill.py \
        --recipe recipes/ddpm_cifar10_redistill.yaml [--any_flag value ...]

Flags follow diffusers' examples/unconditional_image_generation/train_unconditional.py, plus
--teacher_model_name_or_path, --stem_stride, --distiller, --red_preset, --red_alpha,
--red_distance, --distill_weight, --student_init and --recipe (recipe values are defaults; flags
override). `python examples/train_ddpm_redistill.py --help` lists them all.
"""

import sys

from redistill_diffusion.diffusion.run import run_redistill, script_main

if __name__ == "__main__":
    sys.exit(script_main(run_redistill))
