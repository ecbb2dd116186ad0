"""Writing files and folders so that a reader never sees them half-written: write a temporary sibling, then rename it
into place. An interrupted or failed write (Ctrl-C included) leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; when the block ends normally, it becomes `out` (an existing `out`
    is removed only then, and only with `replace`; else FileExistsError). On any exception the folder is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield work
        if out.exists() and not replace:
            raise FileExistsError(f"{out} exists")
        os.chmod(work, 0o755)  # mkdtemp made it private; the finished folder reads like any other
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        work.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone after the rename; left over only after a failure


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
