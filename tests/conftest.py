"""Session-wide test environment: a private cache, quiet local Ray, one small synthetic corpus."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports Ray or builds a backbone, so workers inherit it and tests never
# touch (or depend on) the user's ~/.cache/ermgap_ray.
os.environ.setdefault("ERMGAP_CACHE", tempfile.mkdtemp(prefix="ermgap-test-cache-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~150-clip synthetic twin, generated once per session; tests must not modify it."""
    from ermgap_ray.data.synthetic import make_corpus

    return make_corpus(tmp_path_factory.mktemp("synthetic-small"), seed=0, size="small")
