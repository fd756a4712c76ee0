"""Output that appears complete or not at all: the files of one conversion, committed together.

Every file is written under a temporary name ``.padiff-tmp-<pid>-<token>-<name>`` and fsynced; nothing under a
final name changes until all of them are complete. Then, holding a lock on the folder and with SIGINT/SIGTERM/
SIGHUP held back:

- a folder that did not exist is written as a temporary folder and renamed into place: one rename;
- one file replaces its final name with one rename;
- shards + an index (the index is the commit point): (1) an index naming the temporary shards replaces the
  final index - the new checkpoint is complete from here on, the old shards are no longer referenced;
  (2) old shards are removed and each new shard gets its final name (a hard link); (3) the final index,
  naming the final shards, replaces the first one; (4) the temporary names are removed.

At every moment the final index names a complete checkpoint, the old one or the new one. A process killed
between (1) and (3) leaves an index that records the remaining steps (``metadata.padiff_lite_commit``); the
next conversion into that folder finishes them. Temporary files of processes that are gone are removed by the
next conversion into the folder; readers never take them for a checkpoint.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
from pathlib import Path

from .errors import CheckpointError
from .formats import INDEX_SUFFIX, TEMP_PREFIX, shard_path, format_of, read_index

log = logging.getLogger("padiff_lite.atomic")

NAME_MAX = 255  # bytes in one file name (Linux, macOS)
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-([0-9a-f]{8})-")
COMMIT_KEY = "padiff_lite_commit"
SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a conversion, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def temp_name(name: str, token: str) -> str:
    """``.padiff-tmp-<token>-<name>``, the name cut so that the whole stays within NAME_MAX bytes."""
    prefix = f"{TEMP_PREFIX}{token}-"
    room = NAME_MAX - len(prefix.encode())
    raw = name.encode("utf-8")
    if len(raw) > room:
        name = raw[:room].decode("utf-8", "ignore")
    return prefix + name


def output_error(exc: BaseException, path: Path) -> CheckpointError | None:
    """A CheckpointError with the cause and the fix for an OSError met while writing (None for other errors)."""
    os_exc = exc
    while os_exc is not None and not isinstance(os_exc, OSError):  # torch.save wraps write errors
        os_exc = os_exc.__cause__ or os_exc.__context__
    if os_exc is None:
        if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
            return CheckpointError(f"{path}: writing failed ({str(exc).splitlines()[0][:200]}); the disk may be full: "
                                   "free space or write elsewhere; nothing was written")
        return None
    where = os_exc.filename or path
    e = os_exc.errno
    if e in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        cause = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                 errno.EFBIG: "the file grew past the size limit of this process or filesystem"}[e]
        fix = "free space (or raise the limit) or write elsewhere"
    elif e in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "read-only filesystem" if e == errno.EROFS else "permission denied"
        fix = "write into a folder you can write to"
    elif e == errno.ENAMETOOLONG:
        cause = "the name is too long for this filesystem"
        fix = "choose a shorter output name"
    elif e in (errno.ENOTDIR, errno.EEXIST):
        cause = "a part of the path is a file, not a folder"
        fix = "choose an output path whose folders are folders"
    else:
        cause = f"{type(os_exc).__name__}: {os_exc.strerror or os_exc}"
        fix = "check the output path and the disk"
    return CheckpointError(f"{path}: cannot write the output ({where}: {cause}); {fix}. Nothing was written; "
                           "an earlier output there is unchanged")


def _token() -> str:
    """<pid>-<8 hex digits>: whose temporary file it is, and which one."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path):
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the folder (flock on its descriptor): one commit or clean-up at a time."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM/SIGHUP wait until the block is done (a commit runs to its end); SIGKILL cannot be held."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def terminate_like_interrupt():
    """SIGTERM and SIGHUP raise :class:`Interrupted` (a KeyboardInterrupt) while the block runs, so a killed
    conversion cleans up as Ctrl-C does. Only in the main thread, and not over a handler set from Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}

    def handler(signum, frame):
        raise Interrupted(signum)

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        # None: a handler set outside Python (paddle's crash reporter, which dies without cleaning up)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def clean_folder(folder: Path, sources: set):
    """Finish commits of processes that were killed, and remove temporary files of processes that are gone."""
    if not folder.is_dir():
        return
    with _locked(folder):
        for index in sorted(folder.glob("*" + INDEX_SUFFIX)):
            if not index.name.startswith(TEMP_PREFIX):
                _finish_commit(index, sources)
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            if m and not _alive(int(m.group(1))):
                log.info("removing %s, left by process %s which is gone", p, m.group(1))
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()


def _finish_commit(index: Path, sources: set):
    """If ``index`` is the first step of a commit whose process is gone, do the remaining steps."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        commit = data.get("metadata", {}).get(COMMIT_KEY)
    except (OSError, ValueError, RecursionError, AttributeError):
        return
    if not isinstance(commit, dict):
        return
    renames = commit.get("rename", {})
    pids = {int(m.group(1)) for m in (_TEMP.match(t) for t in renames) if m}
    if not renames or any(_alive(p) for p in pids):
        return
    log.info("%s: finishing the commit of a conversion that was killed", index)
    folder = index.parent
    for old in commit.get("remove", []):
        p = folder / old
        if "/" not in old and p not in sources and old not in renames.values():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    for tmp, final in renames.items():
        _place(folder / tmp, folder / final)
    data["weight_map"] = {k: renames.get(v, v) for k, v in data["weight_map"].items()}
    del data["metadata"][COMMIT_KEY]
    _write_json_atomic(index, data, _token())
    for tmp in renames:
        with contextlib.suppress(FileNotFoundError):
            (folder / tmp).unlink()


def _place(tmp: Path, final: Path):
    """Give ``final`` the content of ``tmp`` (a hard link; a copy where links are not allowed); tmp stays."""
    if not tmp.exists():  # placed before the kill, tmp already removed
        return
    with contextlib.suppress(FileNotFoundError):
        final.unlink()
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        part = final.with_name(tmp.name + ".copy")
        shutil.copyfile(tmp, part)
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, final)


def _write_json_atomic(path: Path, data: dict, token: str):
    tmp = path.with_name(temp_name(path.name, token))
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class AtomicOutput:
    """The output files of one conversion: write each to ``tmp(final)``, then ``commit()``; on any exception
    (KeyboardInterrupt, SIGTERM, SIGHUP included) the temporary files are removed and nothing changes."""

    def __init__(self, finals: list[Path], sources: list[Path], index: Path | None = None, size: int = 0):
        self.sources = {p.resolve() for p in sources}
        clash = [str(p) for p in finals if p.resolve() in self.sources]
        if clash:
            raise CheckpointError(f"the output would overwrite the source ({', '.join(clash)}); "
                                  "choose another output name or folder")
        for p in finals:
            if len(p.name.encode("utf-8")) > NAME_MAX:
                raise CheckpointError(f"{p}: the file name is {len(p.name.encode())} bytes, more than filesystems "
                                      f"allow ({NAME_MAX}); choose a shorter output name")
        self.finals, self.index, self.size = finals, index, size
        self.token = _token()
        self.folder = finals[0].parent
        self.writers: list = []
        self.tmps: dict[Path, Path] = {}
        self.staging = None  # (temporary top folder, the missing top folder it becomes)

    def __enter__(self):
        top = self.folder
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        base = top if top.exists() else top.parent  # the deepest folder that exists
        if not base.is_dir():
            raise CheckpointError(f"{self.finals[0]}: {base} is a file, not a folder; choose an output path whose "
                                  "folders are folders")
        clean_folder(base, self.sources)
        self._check_space(base)
        if top.exists():
            if not top.is_dir():
                raise CheckpointError(f"{self.finals[0]}: {top} is a file, not a folder; choose an output path whose "
                                      "folders are folders")
            self.tmps = {p: p.with_name(temp_name(p.name, self.token)) for p in self.finals}
        else:  # a new folder: write it whole under a temporary name, rename it into place at the end
            tmp_top = top.with_name(temp_name(top.name, self.token))
            tmp_top.mkdir()
            self.staging = (tmp_top, top)
            inner = tmp_top / self.folder.relative_to(top)
            inner.mkdir(parents=True, exist_ok=True)
            self.tmps = {p: inner / p.name for p in self.finals}
        return self

    def _check_space(self, folder: Path):
        if not self.size or not hasattr(os, "statvfs"):
            return
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        need = self.size + (1 << 20)  # headers, index, filesystem blocks
        if free < need:
            raise CheckpointError(f"{self.finals[0]}: the output needs about {need / 1e6:,.1f} MB and {folder} has "
                                  f"{free / 1e6:,.1f} MB free; free space or write elsewhere. Nothing was written")

    def tmp(self, final: Path) -> Path:
        return self.tmps[final]

    def opened(self, writer):
        self.writers.append(writer)

    def commit(self):
        with _signals_held():
            if self.staging is not None:
                tmp_top, top = self.staging
                with _locked(top.parent):
                    _fsync_dir(self.tmps[self.finals[0]].parent)
                    try:
                        os.rename(tmp_top, top)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                            raise
                        raise CheckpointError(f"{top} was created by another process while this conversion wrote its "
                                              "output; nothing was written. Run again to replace it") from None
                    _fsync_dir(top.parent)
                self.staging, self.tmps = None, {}
                return
            with _locked(self.folder):
                if self.index is None or len(self.finals) == 1:
                    for final in self.finals:
                        os.replace(self.tmps[final], final)
                else:
                    self._commit_sharded()
                _fsync_dir(self.folder)
            self.tmps = {}

    def _commit_sharded(self):
        index, shards = self.index, [p for p in self.finals if p != self.index]
        old = self._old_shards(index) - {p.name for p in shards}
        data = json.loads(self.tmps[index].read_text(encoding="utf-8"))
        renames = {self.tmps[p].name: p.name for p in shards}
        first = {"metadata": {**data.get("metadata", {}), COMMIT_KEY: {"rename": renames, "remove": sorted(old)}},
                 "weight_map": {k: self.tmps[self.folder / v].name for k, v in data["weight_map"].items()}}
        _write_json_atomic(index, first, _token())  # (1) the new checkpoint, under temporary shard names
        _fsync_dir(self.folder)
        for name in old:  # (2) old shards go, new ones get their names
            p = self.folder / name
            if p.resolve() not in self.sources:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        for p in shards:
            _place(self.tmps[p], p)
        _fsync_dir(self.folder)
        os.replace(self.tmps[index], index)  # (3) the final index
        _fsync_dir(self.folder)
        for p in shards:  # (4)
            with contextlib.suppress(FileNotFoundError):
                self.tmps[p].unlink()

    def _old_shards(self, index: Path) -> set:
        """Shard names of the index being replaced (files of it that the new one does not reuse are removed)."""
        if not index.is_file():
            return set()
        try:
            fmt = format_of(index)
            return {shard_path(index, n, fmt).name for n in set(read_index(index).values())}
        except CheckpointError:
            return set()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for w in self.writers:
            with contextlib.suppress(Exception):
                getattr(w, "abort", lambda: None)()
        for p in self.tmps.values():
            with contextlib.suppress(OSError):
                p.unlink()
        if self.staging is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.staging[0])
        return False
