"""Opening a user's file for reading: only regular files, never a FIFO, a device, a socket or a folder.

Every reader of a file a user names (checkpoints, shards, indexes, mapping files) opens it here. The file is
opened with ``O_NONBLOCK`` (so a FIFO without a writer cannot block the open) and its type is checked on the
open descriptor with ``fstat`` (so nothing can swap the name between a check and the open): a FIFO, ``/dev/zero``
or a folder, directly or behind a symbolic link, is refused with the error class of the caller, naming the file
and what it is. Readers of other libraries that take a path (``torch.load``, ``safetensors.safe_open``) are given
:func:`fd_path`, the path of the descriptor already checked, so they read that very file.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["open_regular", "fd_path", "check_regular", "read_json_bytes", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 256 << 20  # an index or a mapping file larger than this is not one (the largest HF index: ~10 MB)

_KINDS = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refusal(path: Path, mode: int, what: str, error):
    link = ""
    if path.is_symlink():
        try:
            link = f" (a symbolic link to {os.path.realpath(path)})"
        except OSError:
            link = " (a symbolic link)"
    return error(f"{path}{link}: the {what} is {_kind(mode)}, not a regular file; padiff_lite reads only regular "
                 f"files: give the path of the {what} itself")


def _os_error(path: Path, exc: OSError, what: str, error):
    if exc.errno == errno.ENOENT:
        return error(f"{path}: no such {what}; check the path")
    if exc.errno == errno.ENOTDIR:
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return error(f"{path}: {parent} is a file, not a folder; check the path of the {what}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return error(f"{path}: permission denied reading the {what}; make it readable or copy it somewhere readable")
    if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket cannot be opened: say what it is
        try:
            return _refusal(path, os.stat(path).st_mode, what, error)
        except OSError:
            pass
    if exc.errno == errno.ELOOP:
        return error(f"{path}: too many levels of symbolic links; give the path of the {what} itself")
    return error(f"{path}: cannot open the {what} ({exc.strerror or exc}); check the path")


def open_regular(path, error, what: str = "file", buffering: int = -1):
    """``path`` opened for reading in binary mode, when it is a regular file (a symbolic link is followed only to
    one); otherwise ``error`` (an exception class) naming the file and what it is."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:  # not on Linux (a folder opens read-only), but on some systems
        raise _refusal(path, stat.S_IFDIR, what, error) from None
    except OSError as exc:
        raise _os_error(path, exc, what, error) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refusal(path, mode, what, error)
        if flags & getattr(os, "O_NONBLOCK", 0):  # back to ordinary reads (no effect on regular files anyway)
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def check_regular(path, error, what: str = "file") -> None:
    """``error`` unless ``path`` is a regular file (opened and closed; nothing is read)."""
    open_regular(path, error, what, buffering=0).close()


def fd_path(fh, path) -> str:
    """A path that opens exactly the file ``fh`` holds open (``/proc/self/fd/N`` on Linux; elsewhere ``path``)."""
    proc = f"/proc/self/fd/{fh.fileno()}"
    return proc if os.path.exists(proc) else str(path)


def read_json_bytes(path, error, what: str) -> bytes:
    """The bytes of a JSON file (an index, a mapping) of at most :data:`MAX_JSON_BYTES`, from a regular file."""
    with open_regular(path, error, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(MAX_JSON_BYTES + 1) if size <= MAX_JSON_BYTES else b""
    if size > MAX_JSON_BYTES or len(data) > MAX_JSON_BYTES:
        raise _too_large(path, max(size, len(data)), what, error)
    return data


def _too_large(path: Path, size: int, what: str, error):
    return error(f"{path}: the {what} is {size / 1e6:.0f} MB, more than a {what} can be ({MAX_JSON_BYTES >> 20} MB); "
                 f"give the {what} itself")
