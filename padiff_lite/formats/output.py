"""Output that appears complete or not at all: the files of one conversion, committed together.

Every file is written under a temporary name ``.padiff-tmp-<pid>-<token>-<name>`` and fsynced; nothing under a
final name changes until all of them are complete. Then, holding a lock on the folder and with SIGINT/SIGTERM/
SIGHUP held back:

- a folder that did not exist is written as a temporary folder and renamed into place: one rename;
- one file replaces its final name with one rename;
- shards + an index (the index is the commit point): (0) a commit record (the folder, the token, the final
  names) is written to this user's own state folder (:func:`journal_dir`), never into the output; (1) an index
  naming the temporary shards replaces the final index - the new checkpoint is complete from here on, the old
  shards are no longer referenced; (2) old shards are removed and each new shard gets its final name (a hard
  link); (3) the final index, naming the final shards, replaces the first one; (4) the temporary names and the
  record are removed.

At every moment the final index names a complete checkpoint, the old one or the new one. A process killed
between (1) and (3) leaves its record; the next conversion into that folder by the same user finishes the
commit from it. Nothing read from a checkpoint, an index or any other file in a folder steers what is renamed
or removed: recovery acts only on names carrying our temporary prefix and the token of a record in the state
folder, inside the output folder, never on a source, and only for a process that is gone. Old shards are
removed only when they are named like a shard of the index being replaced (``<stem>-NNNNN-of-NNNNN<suffix>``).
Temporary files of processes that are gone are removed by the next conversion into the folder, except those a
final index still names; readers never take them for a checkpoint. Signals are held during a commit by the same
helper as the in-memory executor's (:func:`..interrupts.uninterrupted`).

Each file's bytes go through :class:`OutputFile` (page-aligned chunks written by a background thread, ``O_DIRECT``
where the filesystem allows it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import CheckpointError
from ..interrupts import uninterrupted
from .common import INDEX_SUFFIX, TEMP_PREFIX
from .index import read_index

log = logging.getLogger("padiff_lite.atomic")

NAME_MAX = 255  # bytes in one file name (Linux, macOS)
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-([0-9a-f]{8})-")
_RECORD = re.compile(r"(\d+)-([0-9a-f]{8})\.json")


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


def sync_folder(folder: Path):
    """A folder's entries on disk (where the file system can; an fsync a folder does not support is skipped)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path):
    """The output folder's entries on disk (a step of the commit)."""
    sync_folder(folder)


def _fsync_record(record: Path):
    """The commit record is on disk (its folder's entry too) before the index switch relies on it."""
    sync_folder(record.parent)


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


def journal_dir(create: bool = True) -> Path | None:
    """This user's folder for commit records: ``$PADIFF_LITE_STATE_DIR``, else ``$XDG_STATE_HOME/padiff_lite``
    (``~/.local/state/padiff_lite``), else ``<tmp>/padiff_lite-<uid>``; created with mode 0700 (``create=False``:
    only an existing one, None when there is none). A folder that is
    not ours (another owner, a symlink, writable by others) is never used: records there could be planted."""
    candidates = []
    if os.environ.get("PADIFF_LITE_STATE_DIR"):
        candidates.append(Path(os.environ["PADIFF_LITE_STATE_DIR"]))
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        candidates.append(Path(state) / "padiff_lite")
        candidates.append(Path(tempfile.gettempdir()) / f"padiff_lite-{os.getuid() if hasattr(os, 'getuid') else 0}")
    problems = []
    for folder in candidates:
        commits = folder / "commits"
        if not create and not commits.is_dir():
            continue  # nothing recorded there: looking must not create this user's state folder
        try:
            commits.mkdir(parents=True, exist_ok=True, mode=0o700)
            foreign = [d for d in (folder, commits) if not _private(d)]
        except OSError as exc:
            problems.append(f"{commits}: {exc}")
            continue
        if not foreign:
            return commits
        problems.append(f"{foreign[0]} is not a private folder of this user (a symbolic link, another owner, or "
                        "writable by others)")
    if not create and not problems:
        return None  # no state folder yet: no records
    raise CheckpointError("no private folder for the commit record of a sharded output (" + "; ".join(problems) +
                          "); set PADIFF_LITE_STATE_DIR to a folder only you can write. Nothing was written")


def _private(d: Path) -> bool:
    st = os.lstat(d)
    if not hasattr(os, "getuid"):
        return True
    return not os.path.islink(d) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _records_for(folder: Path) -> list[tuple[Path, dict]]:
    """The commit records of gone processes on this host about ``folder``: [(record file, record)]."""
    try:
        jdir = journal_dir(create=False)
    except CheckpointError:
        return []
    if jdir is None:
        return []
    real, host, out = os.path.realpath(folder), socket.gethostname(), []
    for rec in sorted(jdir.iterdir()):
        m = _RECORD.fullmatch(rec.name)
        if not m or _alive(int(m.group(1))):
            continue
        try:
            data = json.loads(rec.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("folder") == real and data.get("host") == host:
            out.append((rec, data))
    return out


def _plain(name) -> bool:
    """A plain file name inside a folder, not one of our temporary names."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not name.startswith(TEMP_PREFIX))


def clean_folder(folder: Path, sources: set):
    """Finish commits of processes that were killed (from their records in :func:`journal_dir`), and remove
    temporary files of processes that are gone (except those a final index there still names)."""
    if not folder.is_dir():
        return
    sources = {Path(p).resolve() for p in sources}
    with _locked(folder):
        pending = set()  # tokens of records left for a later run: their temporary files stay
        for rec, data in _records_for(folder):
            _finish_commit(folder, rec, data, sources)
            if rec.exists():
                pending.add(data.get("token"))
        named = _named_by_indexes(folder)
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            if m and not _alive(int(m.group(1))) and p.name not in named and p.resolve() not in sources \
                    and f"{m.group(1)}-{m.group(2)}" not in pending:
                log.info("removing %s, left by process %s which is gone", p, m.group(1))
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()


def _named_by_indexes(folder: Path) -> set:
    """File names the final indexes in ``folder`` refer to: kept, whatever their names (reading an index here
    can only keep a file, never remove or move one)."""
    named = set()
    for index in folder.glob("*" + INDEX_SUFFIX):
        if index.name.startswith(TEMP_PREFIX) or not index.is_file():
            continue
        with contextlib.suppress(CheckpointError, OSError):
            named.update(read_index(index).values())
    return named


def _finish_commit(folder: Path, rec: Path, data: dict, sources: set):
    """Do the remaining steps of the commit ``data`` (a record of ours) of a process that is gone."""
    token, index, shards, old = data.get("token"), data.get("index"), data.get("shards"), data.get("remove", [])
    if not (isinstance(token, str) and _TEMP.fullmatch(f"{TEMP_PREFIX}{token}-") and _plain(index)
            and isinstance(shards, list) and all(_plain(s) for s in shards)
            and isinstance(old, list) and all(_plain(s) for s in old)):
        log.warning("%s: ignoring a malformed commit record", rec)
        rec.unlink(missing_ok=True)
        return
    tmp_index = folder / temp_name(index, token)
    finals = [folder / n for n in shards] + [folder / index]
    if any(p.resolve() in sources for p in finals):
        log.warning("%s: the commit it records would write over a source of this run; left for a later run", rec)
        return
    switched = False  # did step (1) happen? (the final index names our temporary shards)
    with contextlib.suppress(CheckpointError, OSError):
        switched = bool(set(read_index(folder / index).values()) & {temp_name(n, token) for n in shards})
    if switched and tmp_index.is_file() and not tmp_index.is_symlink():  # killed in (1)-(3): redo (2) and (3)
        log.info("%s: finishing the commit of a conversion that was killed", folder / index)
        for name in set(old) - set(shards):
            if (folder / name).resolve() not in sources:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
        for name in shards:
            _place(folder / temp_name(name, token), folder / name)
        _fsync_dir(folder)
        os.replace(tmp_index, folder / index)
        _fsync_dir(folder)
    for name in [*shards, index]:  # (4), or the commit dropped when it had not reached (1)
        with contextlib.suppress(FileNotFoundError):
            (folder / temp_name(name, token)).unlink()
    rec.unlink(missing_ok=True)


def _place(tmp: Path, final: Path):
    """Give ``final`` the content of ``tmp`` (a hard link; a copy where links are not allowed); tmp stays."""
    if not tmp.is_file() or tmp.is_symlink():  # placed before the kill, tmp already removed
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
            if self.index is not None and len(self.finals) > 1:
                journal_dir()  # the commit will need its record: refuse now, before writing, if it has no place
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
        with uninterrupted():
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
        first = {"metadata": data.get("metadata", {}),
                 "weight_map": {k: self.tmps[self.folder / v].name for k, v in data["weight_map"].items()}}
        record = journal_dir() / f"{self.token}.json"  # (0) what to finish if this process is killed
        _write_json_atomic(record, {"folder": os.path.realpath(self.folder), "host": socket.gethostname(),
                                    "token": self.token, "index": index.name,
                                    "shards": [p.name for p in shards], "remove": sorted(old)}, self.token)
        _fsync_record(record)
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
        record.unlink(missing_ok=True)

    def _old_shards(self, index: Path) -> set:
        """Shards of the index being replaced that the new one does not reuse (they are removed): only names of
        the form ``<stem>-NNNNN-of-NNNNN<suffix>`` of this very index, what a conversion writes; a file the old
        index names otherwise (``config.json``, another model's file) is never removed because an index says so."""
        if not index.is_file():
            return set()
        try:
            names = set(read_index(index).values())
        except CheckpointError:
            return set()
        stem = index.name[:-len(INDEX_SUFFIX)]  # model.safetensors
        base, dot, suffix = stem.rpartition(".")
        pattern = re.compile(re.escape(base) + r"-\d{5}-of-\d{5}" + re.escape(dot + suffix))
        kept = sorted(n for n in names if not pattern.fullmatch(n))
        if kept:
            log.info("%s: not removing %s (named by the old index, but not like one of its shards)", index,
                     ", ".join(kept))
        return {n for n in names if pattern.fullmatch(n)}

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


class OutputFile:
    """A write-only file for large outputs: bytes are gathered in page-aligned chunks, written by a background
    thread (so writing overlaps with producing the next bytes) with ``O_DIRECT`` where the filesystem allows it.

    ``O_DIRECT`` skips the page cache: a buffered write first has to get a fresh page-cache page for every
    4 KiB, and on this kind of VM a first touch of memory runs at 0.2-2 GB/s, slower than the disk itself.
    Where ``O_DIRECT`` is refused (tmpfs, some network filesystems) the same code writes buffered.
    ``commit()`` writes the rest and fsyncs; ``close()`` alone (after an error) just closes.
    """

    CHUNK = 8 << 20  # bytes per write; two chunks are in memory (16 MiB: no faster on these disks, +16 MB of peak)
    ALIGN = 4096

    def __init__(self, path: Path, direct: bool = True):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = direct and hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(self.path, flags | (os.O_DIRECT if self.direct else 0), 0o666)
        except OSError:
            if not self.direct:
                raise
            self.direct = False
            self.fd = os.open(self.path, flags, 0o666)
        self.bufs = [mmap.mmap(-1, self.CHUNK) for _ in range(2)]  # anonymous maps are page-aligned
        self.pending: list = [None, None]
        self.cur, self.fill, self.offset = 0, 0, 0  # chunk being filled, bytes in it, file offset of it
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="padiff-write")
        self.lock = threading.Lock()
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def tell(self) -> int:
        return self.offset + self.fill

    def flush(self):  # torch.save calls it; data reaches the disk in commit()
        pass

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            buf = self.bufs[self.cur]
            n = min(self.CHUNK - self.fill, len(view) - done)
            buf[self.fill:self.fill + n] = view[done:done + n]
            self.fill += n
            done += n
            if self.fill == self.CHUNK:
                self._submit(self.CHUNK)
        return len(view)

    def _submit(self, length: int):
        """Hand the current chunk (its first ``length`` bytes) to the writer thread and start the other one."""
        self.pending[self.cur] = self.pool.submit(self._pwrite, self.cur, length, self.offset)
        self.offset += self.fill
        self.cur, self.fill = 1 - self.cur, 0
        if self.pending[self.cur] is not None:  # wait until the other chunk is on disk before refilling it
            self.pending[self.cur].result()
            self.pending[self.cur] = None

    def _pwrite(self, i: int, length: int, offset: int):
        view = memoryview(self.bufs[i])[:length]
        done = 0
        while done < length:
            try:
                n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                if not (self.direct and exc.errno == 22):  # EINVAL: this filesystem takes no O_DIRECT writes
                    raise
                import fcntl

                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                with self.lock:
                    self.direct = False
                continue
            done += n
        view.release()

    def commit(self):
        """Write what is left, set the file's exact size and fsync it."""
        size = self.tell()
        if self.fill:
            tail = self.fill
            if self.direct:  # O_DIRECT writes whole blocks: pad with zeros, cut back by ftruncate below
                pad = -tail % self.ALIGN
                self.bufs[self.cur][tail:tail + pad] = bytes(pad)
                tail += pad
            self._submit(tail)
        for i, f in enumerate(self.pending):
            if f is not None:
                f.result()
                self.pending[i] = None
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.pool.shutdown(wait=True)
        os.close(self.fd)
        for b in self.bufs:
            b.close()
