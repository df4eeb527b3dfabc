"""Quiet third-party output for ordinary runs; `--verbose` keeps it.

DeepSpeed's accelerator banner, transformers' weight-loading bars and their FutureWarnings say
nothing a user of a finished trial needs, and they bury the one progress line per epoch.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Call before the trial starts; the environment variable also reaches Ray workers."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("DeepSpeed", "deepspeed", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
