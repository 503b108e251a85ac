"""The checkpoint tool's file system rules: what may be read, where output may go, and how it
is published (``specs/checkpoints.md``, "Data safety").

- Every path named by a checkpoint (an index's ``weight_map``, a symlink inside SRC) is
  confined to SRC: absolute paths, ``..`` and symlinks that leave SRC are refused, naming the
  entry; symlink loops and special files (FIFOs, sockets, devices) are refused.
- SRC is only ever opened for reading. Output files are created with ``O_CREAT | O_EXCL |
  O_NOFOLLOW`` inside a partial directory of the run's own, so no existing file can be
  truncated or written through a link.
- The partial directory (``.DST.incq-partial-<pid>-<random>``) holds a lock for the lifetime
  of the run; it is removed on any failure, SIGINT, SIGTERM and SIGHUP, and a later run removes
  the partial directories whose lock nobody holds (their process died, e.g. by SIGKILL).
- Publishing renames the partial directory to DST with ``renameat2(RENAME_NOREPLACE)``: a DST
  that appeared meanwhile is never replaced. ``--force`` replaces only incq's own previous
  output (a directory whose ``.incq-output.json`` lists every file in it) or an empty
  directory, by an atomic exchange.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from incq._errors import IncqError

MARKER = ".incq-output.json"
LOCK = ".incq-lock"
PARTIAL = ".incq-partial"


class CheckpointError(IncqError):
    """A checkpoint that cannot be read, converted or written as asked."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so partial output is removed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- reading SRC


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine(root: Path, entry, where: str, follow_symlinks: bool = False) -> Path:
    """``root / entry`` for a relative ``entry`` named by a checkpoint, refused (naming ``where``
    and the entry) unless it stays inside ``root`` once resolved. ``root`` must be resolved.

    With ``follow_symlinks``, a symlink inside ``root`` may point to a regular file elsewhere
    (a Hugging Face cache snapshot links to ``../../blobs``); the entry itself must still be
    a plain relative path inside ``root``.
    """
    if not isinstance(entry, str) or not entry or "\x00" in entry:
        raise CheckpointError(f"{where}: file entry {entry!r} is not a file name")
    relative = Path(entry)
    if relative.is_absolute() or ".." in relative.parts:
        raise CheckpointError(f"{where}: file entry {entry!r} leaves the checkpoint directory {root}")
    path = root / relative
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: file entry {entry!r}: {path} does not exist") from None
    except (RuntimeError, OSError) as e:  # RuntimeError / ELOOP: a symlink loop
        raise CheckpointError(f"{where}: file entry {entry!r}: symlink loop or unreadable path ({e})") from None
    if not _inside(target, root):
        if not (follow_symlinks and _inside(path.parent.resolve(), root) and target.is_file()):
            raise CheckpointError(f"{where}: file entry {entry!r} is a symlink to {target}, outside the "
                                  f"checkpoint directory {root} (pass --follow-symlinks to read it)")
    if not stat.S_ISREG(target.stat().st_mode):
        raise CheckpointError(f"{where}: file entry {entry!r} is not a regular file")
    return path


def source_entries(root: Path, skip: set[str] | frozenset = frozenset(), follow_symlinks: bool = False) -> Iterator[tuple[str, str]]:
    """Every entry of SRC to carry over unchanged, as (relative path, kind), kind "dir", "file"
    or "link" (a symlink that stays inside SRC, recreated as is). Names in ``skip`` (top level)
    (relative paths) are left out. Refuses special files, symlink loops, dangling symlinks and symlinks leaving
    SRC (unless ``follow_symlinks`` and the target is a regular file: then "file", its content
    copied). Directory symlinks are never followed, so nothing is walked twice."""
    def walk(folder: Path, prefix: str) -> Iterator[tuple[str, str]]:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if rel in skip:
                continue
            if entry.is_symlink():
                yield rel, _symlink_kind(root, Path(entry.path), rel, follow_symlinks)
            elif entry.is_dir(follow_symlinks=False):
                yield rel, "dir"
                yield from walk(Path(entry.path), rel + "/")
            elif entry.is_file(follow_symlinks=False):
                yield rel, "file"
            else:
                raise CheckpointError(f"{root}: {rel} is not a regular file, directory or symlink "
                                      "(a FIFO, socket or device); refusing to read it")

    yield from walk(root, "")


def _symlink_kind(root: Path, path: Path, rel: str, follow_symlinks: bool) -> str:
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"{root}: {rel} is a dangling symlink (to {os.readlink(path)})") from None
    except (RuntimeError, OSError):
        raise CheckpointError(f"{root}: {rel} is part of a symlink loop") from None
    if _inside(target, root):
        return "link"
    if follow_symlinks and target.is_file():
        return "file"
    raise CheckpointError(f"{root}: {rel} is a symlink to {target}, outside the checkpoint directory "
                          "(pass --follow-symlinks to copy the file it points to)")


def read_only(path: Path):
    """A file of SRC opened for reading only, never through a FIFO or device."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


# --------------------------------------------------------------------------- writing output


def create(folder: Path, rel: str) -> int:
    """A new file ``folder / rel`` for writing: refused unless inside ``folder``; never an
    existing file, never through a symlink."""
    path = folder / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or not _inside(path.parent.resolve(), folder.resolve()):
        raise CheckpointError(f"refusing to write {rel!r}: outside the output directory {folder}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)


def write_text(folder: Path, rel: str, text: str) -> None:
    with os.fdopen(create(folder, rel), "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def copy_file(src: Path, folder: Path, rel: str) -> None:
    """Copy a file of SRC (read-only) to a new file in the output, with its mode bits and times."""
    with read_only(src) as fin, os.fdopen(create(folder, rel), "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
        st = os.fstat(fin.fileno())
    os.chmod(folder / rel, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    os.utime(folder / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


def carry_over(root: Path, folder: Path, entries) -> None:
    """Recreate ``entries`` of :func:`source_entries` under the output ``folder``."""
    for rel, kind in entries:
        if kind == "dir":
            os.mkdir(folder / rel)
        elif kind == "file":
            copy_file(root / rel, folder, rel)
        else:  # a symlink inside SRC: the same link, relative to where it lives
            target = (root / rel).resolve()
            os.symlink(os.path.relpath(target, (root / rel).parent.resolve()), folder / rel)


def write_marker(folder: Path, source: Path, command: str) -> None:
    """``.incq-output.json``: what makes a folder incq's own output (``--force`` checks it)."""
    from incq import __version__

    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel in (LOCK, MARKER) or path.is_dir() and not path.is_symlink():
            continue
        files[rel] = "link" if path.is_symlink() else path.lstat().st_size
    write_text(folder, MARKER, json.dumps({"written_by": f"incq {__version__}", "command": command,
                                           "source": str(source), "files": files}, indent=2) + "\n")


# --------------------------------------------------------------------------- the destination


def check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse a DST that would write into SRC, or that ``--force`` may not replace. Both resolved,
    except that ``dst`` keeps its last component unresolved so a symlink is seen as one."""
    if dst == src:
        raise CheckpointError(f"DST {dst} is SRC; incq never writes into its source")
    if src in dst.parents:
        raise CheckpointError(f"DST {dst} is inside SRC {src}")
    if not dst.parent.is_dir():
        raise CheckpointError(f"{dst.parent}: no such directory")
    if not os.path.lexists(dst):
        return
    if not force:
        raise CheckpointError(f"DST {dst} exists (pass --force to replace incq's own earlier output there)")
    why = force_refusal(src, dst)
    if why:
        raise CheckpointError(f"--force refuses to replace {dst}: {why}")


def force_refusal(src: Path, dst: Path) -> str | None:
    """Why ``--force`` may not replace ``dst``, or None when it may."""
    if dst.is_symlink():
        return "it is a symlink"
    if not dst.is_dir():
        return "it is not a directory"
    real = dst.resolve()
    if real == src or real in src.parents:
        return f"it holds SRC {src}"
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "it is the working directory or one of its parents"
    home = Path.home().resolve()
    if real == home or real in home.parents:
        return "it is the home directory or one of its parents"
    entries = [p for p in real.iterdir()]
    if not entries:
        return None
    marker = real / MARKER
    if not marker.is_file() or marker.is_symlink():
        return (f"it is not incq's output (no {MARKER}) and holds {entries[0].name}"
                + (f" and {len(entries) - 1} more" if len(entries) > 1 else ""))
    try:
        listed = json.loads(marker.read_text()).get("files")
        if not isinstance(listed, dict):
            raise ValueError
    except (ValueError, AttributeError, OSError):
        return f"its {MARKER} is unreadable"
    for path in sorted(real.rglob("*")):
        rel = path.relative_to(real).as_posix()
        if rel == MARKER or path.is_dir() and not path.is_symlink():
            continue
        expected = listed.get(rel)
        if expected is None:
            return f"{rel} was not written by incq"
        if expected != ("link" if path.is_symlink() else path.lstat().st_size):
            return f"{rel} changed since incq wrote it"
    return None


# --------------------------------------------------------------------------- partial output


def _lock(path: Path) -> int | None:
    """An exclusive lock on ``path``, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def stale_partials(parent: Path) -> list[tuple[Path, bool]]:
    """Partial directories in ``parent`` left by runs that are no longer alive, each with
    whether it is safe to remove (it holds incq's lock file, nobody holds the lock)."""
    found = []
    for path in sorted(parent.glob(f".*{PARTIAL}*")):
        if path.is_symlink() or not path.is_dir():
            continue
        lock = path / LOCK
        if not lock.is_file():  # an older incq's partial output: named, not removed
            found.append((path, False))
            continue
        fd = _lock(lock)
        if fd is not None:
            os.close(fd)
            found.append((path, True))
    return found


def remove_stale_partials(parent: Path, report) -> None:
    for path, removable in stale_partials(parent):
        size = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
        if removable:
            shutil.rmtree(path, ignore_errors=True)
            report(f"removed {path} ({size / 1e6:.1f} MB), partial output of an incq run that did not finish")
        else:
            report(f"{path} ({size / 1e6:.1f} MB) looks like partial output of an earlier incq run; "
                   "remove it if no conversion is running")


@contextmanager
def partial_directory(dst: Path):
    """A new directory beside ``dst`` for the output, locked while the run lives and removed
    unless :func:`publish` moved it to ``dst``. Normal permissions (0777 less the umask).

    It is made and locked under a staging name, then renamed to its partial name, so that a
    scan for stale partial output never sees one that is not locked yet."""
    parent = dst.parent
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = parent / f".{dst.name}.incq-staging-{tag}"
    path = parent / f".{dst.name}{PARTIAL}-{tag}"
    os.mkdir(staging)
    fd = None
    try:
        fd = os.open(staging / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, path)
        yield path
    finally:
        if fd is not None:
            os.close(fd)
        for leftover in (staging, path):
            if os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------- publishing

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) with ``flags``; False when the system or file system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish(tmp: Path, dst: Path, src: Path, force: bool) -> None:
    """Move the finished output ``tmp`` to ``dst`` atomically. Never replaces a ``dst`` that
    appeared meanwhile; with ``force``, replaces only what :func:`force_refusal` allows."""
    _remove_lock(tmp)
    if force and os.path.lexists(dst):
        why = force_refusal(src, dst)
        if why:
            raise CheckpointError(f"--force refuses to replace {dst}: {why}")
        if _renameat2(tmp, dst, _RENAME_EXCHANGE):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the replaced output
            return
        old = dst.parent / f".{dst.name}{PARTIAL}-old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        if _renameat2(tmp, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise CheckpointError(f"DST {dst} appeared while converting (another run?); it was left as it is and "
                              "this run's output discarded") from None
    # No renameat2: rename(2) refuses a non-empty directory and any file, so at worst an
    # empty directory that appeared in the last instant is replaced; no data is lost.
    if os.path.lexists(dst):
        raise CheckpointError(f"DST {dst} appeared while converting (another run?); it was left as it is and "
                              "this run's output discarded")
    try:
        os.rename(tmp, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise CheckpointError(f"DST {dst} appeared while converting (another run?); it was left as it is "
                                  "and this run's output discarded") from None
        raise


def _remove_lock(tmp: Path) -> None:
    try:
        os.unlink(tmp / LOCK)  # the open descriptor keeps the lock until the run ends
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- signals


@contextmanager
def signals_unwind():
    """SIGTERM and SIGHUP raise :class:`Terminated` (SIGINT raises KeyboardInterrupt already),
    so ``finally`` blocks remove partial output. Restores the previous handlers."""
    def handler(signum, frame):
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
