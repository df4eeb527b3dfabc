"""Quiet third-party output for ordinary runs; `--verbose` keeps it.

DeepSpeed's accelerator banner, transformers' weight-loading bars and their FutureWarnings say
nothing a user of a finished trial needs, and they bury the one progress line per epoch.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Call before the trial starts; the environment variables also reach Ray workers.

    Naming the CPU accelerator up front stops DeepSpeed's "Setting accelerator to CPU" warning
    (its logger resets its own level on import, so a logging filter set here would not hold).
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
