"""Files that readers never see half-written, the cache root, and writable-directory checks.

Every writer in the package goes through `atomic_write` (a file) or `atomic_dir` (a folder):
both stage next to the target and `os.replace` / rename into place, so a crash leaves either
the old version or the new one, and a concurrent reader sees one of the two.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ermgap_ray.errors import StorageError


def cache_root() -> Path:
    """Root of ermgap-ray's on-disk caches: `$ERMGAP_CACHE`, else `~/.cache/ermgap_ray`."""
    env = os.environ.get("ERMGAP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ermgap_ray"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` for writers that want a file name (pyarrow, numpy); renamed
    over `path` when the block ends without an exception, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open handle on a temp file that replaces `path` when the block succeeds."""
    with atomic_path(path) as tmp:
        kw: dict[str, Any] = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **kw) as handle:
            yield handle


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """A staging folder beside `path`, renamed to `path` when the block succeeds.

    If `path` appears meanwhile (another process won the race) and `replace` is False, the
    winner's folder is kept and the staged one discarded: callers that materialise the same
    deterministic content (a corpus, a checkpoint, a cache) can all race safely.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if replace and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, path)
            except OSError as err:
                if not path.exists() or err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove a file can be written there; else `StorageError`.

    Checked before any work starts, so a bad `--storage` fails in one line, not after Ray has
    started or a trial has trained.
    """
    path = Path(path).expanduser().absolute()
    try:
        if path.exists() and not path.is_dir():
            raise StorageError(f"not a writable directory: {path} (it is a file)")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except StorageError:
        raise
    except OSError as err:
        reason = err.strerror or str(err)
        raise StorageError(f"not a writable directory: {path} ({reason})") from None
    return path
