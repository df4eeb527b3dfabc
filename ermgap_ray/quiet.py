"""Quiet third-party output for ordinary runs; `--verbose` keeps it.

DeepSpeed's accelerator banner, transformers' weight-loading bars and their FutureWarnings say
nothing a user of a finished trial needs, and they bury the one progress line per epoch.
Everything here is an environment variable, a warnings filter or a logger level, so it costs
nothing (a CLI calls it before its run-directory lock) and reaches Ray workers too.
"""

from __future__ import annotations

import logging
import os
import warnings


def _has_gpu() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")


def quiet_libraries() -> None:
    """Call before the libraries are imported.

    Naming the CPU accelerator up front stops DeepSpeed's "Setting accelerator to CPU" warning
    (its logger resets its own level on import, so a logger level set here would not hold);
    transformers' bars follow huggingface_hub's switch.
    """
    if not _has_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
