"""Train a plain DDPM UNet2DModel (a teacher for ReDistill) with the same training loop.

    accelerate launch --num_cpu_threads_per_process 2 examples/train_ddpm_teacher.py \
        --model_config_name_or_path tiny-ddpm-32 --dataset_name redistill:shapes --output_dir outputs/teacher

--model_config_name_or_path takes a UNet config folder / config.json or a shipped name
(tiny-ddpm-32, google-ddpm-cifar10-32). The result is a DDPMPipeline folder that
examples/train_ddpm_redistill.py accepts as --teacher_model_name_or_path.
"""

import sys

from redistill_diffusion.diffusion.run import run_teacher, script_main

if __name__ == "__main__":
    sys.exit(script_main(run_teacher))
