#!/usr/bin/env python
"""FID / IS / KID of diffusion pipelines side by side: the script form of `redistill eval`.

    python examples/evaluate_fid_is.py --recipe recipes/eval_fid_is_cpu.yaml \
        --pipelines path/to/teacher path/to/student --output_dir eval_cpu

Same flags as `redistill eval --help` (recipe values are defaults, flags override). It samples on
one device; for 50k-sample paper runs use a GPU (sampling dominates: see recipes/eval_fid_is.yaml).
"""

import sys

from redistill_diffusion.commands.eval import main

if __name__ == "__main__":
    sys.exit(main())
