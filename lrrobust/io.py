"""Atomic file writes: a file is either the old one or the complete new one, never half-written.

Every OSError while writing (disk full, a file size limit, permissions, a read-only or virtual filesystem) becomes
``lrrobust.errors.EnvironmentFailure``, one line naming the path and the cause, which the CLI prints with exit code 1.
``ensure_writable_dir`` lets a command check its outputs before long work starts; ``read_input_text`` reads a file
the user named, its failures the user's (exit code 2) or the machine's (exit code 1); ``file_sha256`` hashes a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lrrobust.errors import EnvironmentFailure, UserError, describe_os_error

PROBE_PREFIX = ".lrrobust-probe."  # with the ".tmp" suffix: removed like a killed write's temporary file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _failure(path: Path, error: OSError, tmp: Path | None = None) -> EnvironmentFailure:
    """``error``, met while writing ``path`` (through its temporary file ``tmp``), as one line naming ``path``."""
    if isinstance(error, EnvironmentFailure):
        return error
    cause = describe_os_error(error)
    names = {str(n) for n in (error.filename, error.filename2) if n is not None}
    if names and not names & {str(path), str(tmp)}:
        cause = f"{error.filename}: {cause}"  # the failing call was about another file only (a parent, a source)
    return EnvironmentFailure(path, cause)


def _blocking_file(path: Path) -> Path | None:
    """The first existing component of ``path`` (itself or an ancestor) when it is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def make_dirs(directory: str | os.PathLike) -> None:
    """``mkdir -p directory``; an EnvironmentFailure naming it and the cause when that is impossible."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocking = _blocking_file(directory)
        cause = f"{blocking} is a file, not a directory" if blocking is not None else describe_os_error(e)
        raise EnvironmentFailure(directory, cause, action="cannot create directory") from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was; an OSError (from the block or the
    rename) is raised as EnvironmentFailure naming ``path``.
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise _failure(path, e, tmp_path) from e
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class _RecordingWriter:
    """A file object for torch.save that keeps the OSError of a failed write: torch reports it only as a
    RuntimeError ('enforce fail at inline_container.cc ... unexpected pos'), without the cause."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically; a failed write is an EnvironmentFailure naming ``path``."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = _RecordingWriter(f)
            try:
                torch.save(obj, sink)
            except RuntimeError as e:
                if sink.error is not None:
                    raise sink.error from e  # an OSError: atomic_path names the path and the cause
                text = str(e)
                if "inline_container" in text or "PytorchStreamWriter" in text:
                    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
                    raise EnvironmentFailure(path, f"the write failed ({first[:120]})") from e
                raise

    atomic_write(path, write)


def csv_text(columns: list[str] | tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """CSV text with a header of ``columns``; None becomes an empty field, keys not in ``columns`` are left out."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync: a crash loses at most the line being written.

    A failed write (disk full, ...) is cut off again, so the file keeps only complete lines, and raised as
    EnvironmentFailure naming ``path``.
    """
    path = Path(path)
    data = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise _failure(path, e) from e
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # never leave half a line behind
            raise
    except OSError as e:
        raise _failure(path, e) from e
    finally:
        os.close(fd)


def _probe(directory: Path) -> None:
    """Create, write, fsync and remove a small file in ``directory`` (OSError when that is impossible)."""
    fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, suffix=".tmp", dir=directory)
    try:
        os.write(fd, b"lrrobust: can this directory be written?\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def ensure_writable_dir(path: str | os.PathLike, option: str, create: bool = True,
                        given: str | os.PathLike | None = None) -> Path:
    """Check, before long work starts, that files can be written in the directory ``path``.

    ``option`` (and ``given``, the path as the user gave it, when ``path`` is derived from it, such as a file's
    directory) name it in messages. ``create``: create ``path`` (and its missing parents) and write and remove a
    probe file in it; on failure the directories it created are removed again. Not ``create``: change nothing:
    probe ``path`` when it exists, else its nearest existing ancestor (for commands whose own code creates and
    locks the directory, and for outputs that must leave nothing behind when the command is refused later).

    Any output that cannot be written is an EnvironmentFailure (exit code 1), named by the option and the cause: a
    file where a directory should be, permissions, a read-only or virtual filesystem, a full disk.
    """
    path = Path(path)
    named = Path(given) if given is not None else path
    blocking = _blocking_file(path)
    if blocking is not None:
        cause = "it is a file, not a directory" if blocking == named else f"{blocking} is a file, not a directory"
        raise EnvironmentFailure(named, f"{cause}; choose another path", action="cannot write in", context=option)
    existing = next(p for p in (path, *path.parents) if p.exists())
    target = path if create else existing
    context = option if target == named else f"{option} {named}"  # the path once: "cannot write in X (--out): ..."
    missing = [p for p in (path, *path.parents) if not p.exists()] if create else []  # deepest first
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        _probe(target)
    except OSError as e:
        for directory in missing:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise EnvironmentFailure(target, _probe_cause(e, target), action="cannot write in", context=context) from e
    return path


def _probe_cause(error: OSError, directory: Path) -> str:
    """Why no file could be made in the existing ``directory``: ENOENT there means a filesystem that takes no new
    files (/proc, /sys), which "No such file or directory" alone would not say."""
    if error.errno == errno.ENOENT and directory.is_dir():
        return "no file can be created there (a virtual filesystem such as /proc or /sys)"
    return describe_os_error(error)


# Errors reading a file the user named that are the user's to fix (exit code 2); others (EIO, ...) are the machine's.
_INPUT_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM,
                 errno.ENAMETOOLONG}


def read_input_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of an input file the user named (``what`` names it in messages, e.g. "study spec").

    A path that is missing, a directory, a symlink loop or unreadable is the user's input: a UserError (exit code 2);
    a failing disk is an EnvironmentFailure (exit code 1); text that is not UTF-8 is a UserError.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        if e.errno == errno.EISDIR or (e.errno is None and path.is_dir()):
            raise UserError(f"{what} {path} is a directory; give a file") from None
        if e.errno == errno.ENOENT:
            raise UserError(f"{what} not found: {path}") from None
        if e.errno == errno.ELOOP:
            raise UserError(f"{what} {path} is a symbolic link loop; give a file") from None
        if e.errno in _INPUT_ERRNOS:
            raise UserError(f"{what} {path} cannot be read: {describe_os_error(e)}") from None
        raise EnvironmentFailure(path, describe_os_error(e), action="cannot read") from e


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
