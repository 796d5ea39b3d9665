"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the same folder (so the rename stays on one file
system), is flushed and fsynced, then ``os.replace``d over the target; if anything fails, the
temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, cast

DEFAULT_PERMISSIONS = 0o666  # before the umask, as open() creates files
OWNER_ONLY = 0o600


@contextmanager
def _atomic_handle(path: Path, open_mode: str, permissions: int, encoding: str | None) -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a file or link someone else put there; the mode applies from creation on.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
    try:
        with os.fdopen(fd, open_mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_binary_file(path: Path, *, permissions: int = DEFAULT_PERMISSIONS) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` when the ``with`` block ends without an exception."""
    with _atomic_handle(path, "wb", permissions, None) as handle:
        yield cast(BinaryIO, handle)


@contextmanager
def atomic_text_file(path: Path, *, encoding: str = "utf-8",
                     permissions: int = DEFAULT_PERMISSIONS) -> Iterator[TextIO]:
    """``atomic_binary_file`` for text."""
    with _atomic_handle(path, "w", permissions, encoding) as handle:
        yield cast(TextIO, handle)


def write_text_atomic(path: Path, text: str, *, encoding: str = "utf-8",
                      permissions: int = DEFAULT_PERMISSIONS) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_text_file(path, encoding=encoding, permissions=permissions) as handle:
        handle.write(text)
