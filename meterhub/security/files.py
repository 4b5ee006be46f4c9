"""Files that hold secrets: written 0600 from the first byte, refused when others can read them.

One place for the rule so private keys, credential files and secret files are checked alike.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o600


class InsecureFileError(PermissionError):
    """A secret file others may read, or one that is not a regular file."""


def check_private_file(path: Path, what: str) -> None:
    """Raise unless ``path`` is a regular file no group or other user can access.

    ``what`` names the setting or key the file belongs to, so the message says which one.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise InsecureFileError(f"{what}: {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecureFileError(
            f"{what}: {path} is readable by group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def read_private_file(path: Path, what: str) -> bytes:
    """The bytes of a secret file, after :func:`check_private_file`."""
    check_private_file(path, what)
    return path.read_bytes()


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` with mode 0600.

    The file is created 0600 (never briefly world-readable) next to its destination and
    renamed over it, so a reader sees the old or the new content, never half of it.
    ``overwrite=False`` refuses to replace an existing file (a private key is never
    silently regenerated).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, PRIVATE_MODE)  # in case a umask or an odd filesystem widened it
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another writer created it meanwhile
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
