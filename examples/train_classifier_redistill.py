"""Train a timm classifier (a teacher) or distil a ReDistill student from one.

    # a teacher: CIFAR-10 parquet, 10% held out for evaluation
    accelerate launch --num_cpu_threads_per_process 2 examples/train_classifier_redistill.py \
        --recipe recipes/cls_cifar10_teacher_cpu.yaml

    # its student: stem stride 4, RED blocks at the paper's placement, 0.5 CE + 0.5 RED
    accelerate launch --num_cpu_threads_per_process 2 examples/train_classifier_redistill.py \
        --recipe recipes/cls_cifar10_student_cpu.yaml --distiller red+kd

Flags: the shared training flags (--output_dir, --train_batch_size, --num_epochs, --optimizer sgd|adamw,
--learning_rate, --lr_scheduler cosine|..., --lr_warmup_steps, --checkpointing_steps,
--resume_from_checkpoint, --validation_epochs, --push_to_hub, ...), the data flags (--dataset_name,
--train_data_dir, --data_files, --image_column, --label_column, --resolution, --max_train_samples)
and the classification flags (--model_name_or_path, --teacher_model_name_or_path, --stem_stride,
--strides, --distiller, --red_alpha, --validation_split_size, --eval_data, --mixup_alpha, ...).
`python examples/train_classifier_redistill.py --help` lists them all.
"""

import sys

from redistill_diffusion.classification.run import run_classifier
from redistill_diffusion.errors import script_main

if __name__ == "__main__":
    sys.exit(script_main(run_classifier))
