"""Files written safely.

* Atomic writes: a reader sees the old file or the new one, never half of it, and the rename itself is made
  durable (the directory is fsync'd after ``os.replace``).
* JSONL logs: :func:`append_jsonl` appends whole lines (one ``O_APPEND`` write per call, so concurrent writers,
  threads or processes, interleave whole lines) and :func:`read_jsonl` reads them back, tolerating the line a
  crash cut short.
* Hostile JSON: :func:`loads_json` turns input nested too deeply for Python (``RecursionError``) into a
  :class:`ValueError` naming where it came from, like any other malformed input.
* Crash leftovers: a temporary file that a killed writer left behind (``.NAME.XXXXXXXX.tmp``) is removed by the
  next atomic write into the same directory. A writer holds an exclusive ``flock`` on its temporary file until
  the rename, so only files no live process is writing are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so temporaries are neither locked nor cleaned
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_jsonl", "atomic_write_bytes", "atomic_write_text", "clean_stale_temporaries", "fsync_dir",
           "loads_json", "locked_temporary", "read_jsonl"]

# what tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") makes: NAME, then 8 characters from [a-z0-9_]
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# a temporary file younger than this is never touched: its writer may have created it and not yet locked it
_STALE_AFTER_S = 5.0


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` so a rename or a new file inside it survives a power loss (a no-op where directories
    cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temporaries(directory: str | os.PathLike[str], *, older_than: float = _STALE_AFTER_S) -> int:
    """Remove the temporary files of our own naming (``.NAME.XXXXXXXX.tmp``) that a writer killed mid-write left in
    ``directory``; the number removed.

    A file is removed only when no process holds its ``flock`` (every writer of :func:`atomic_write_bytes` holds one
    until its rename) and it was last modified more than ``older_than`` seconds ago. Anything else, and any error
    (a file that vanished, a directory that cannot be listed), is left alone: cleaning never fails a write.
    """
    removed = 0
    if fcntl is None:
        return 0
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if not _TEMPORARY.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat().st_mtime < older_than:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: BlockingIOError, left alone
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def locked_temporary(directory: str | os.PathLike[str], name: str) -> tuple[int, str]:
    """A new temporary file for ``name`` in ``directory``, named as :func:`clean_stale_temporaries` expects
    (``.NAME.XXXXXXXX.tmp``) and locked (``flock``) until its descriptor is closed, so no other writer's cleaning
    removes it: ``(fd, path)``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'd, renamed over it, and the
    directory fsync'd.

    With ``exclusive``, the temporary file is hard-linked to ``path`` instead of renamed over it, so an existing
    file is never replaced: :class:`FileExistsError` (like ``O_EXCL``), and readers still never see a partial file.

    The temporary file stays locked (``flock``) until it is renamed, and temporaries that killed writers left in
    the directory are removed first (:func:`clean_stale_temporaries`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    fd, tmp = locked_temporary(target.parent, target.name)
    try:  # the lock is released by the close below, after the rename: see clean_stale_temporaries
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        if exclusive:
            os.link(tmp, target)
            Path(tmp).unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def loads_json(data: str | bytes, *, source: str) -> Any:
    """``json.loads(data)``, with input nested too deeply for Python reported as a :class:`ValueError` naming
    ``source`` (a file, ``file:line`` or a field) instead of a ``RecursionError``. Malformed JSON raises
    :class:`json.JSONDecodeError` (a ``ValueError``) as usual."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply to read (hostile or corrupt input)") from None


def _dumps(obj: Any, default: Callable[[Any], Any] | None) -> bytes:
    try:
        import orjson
    except ImportError:  # orjson is optional: the standard library gives the same lines, a little slower
        return json.dumps(obj, ensure_ascii=False, default=default).encode()
    return orjson.dumps(obj, default=default)


def append_jsonl(path: str | os.PathLike[str], obj_or_objs: Mapping[str, Any] | Iterable[Any], *,
                 default: Callable[[Any], Any] | None = None) -> int:
    """Append one JSON object (a mapping) or several (any other iterable: one line each) to the JSONL file
    ``path`` (created, with its directory, if missing); the number of lines written.

    All the lines go out in one ``write`` on a file opened with ``O_APPEND`` (a short write is continued until
    everything is written), so writers in other threads or processes interleave whole lines. If the file does not
    end with a newline (a crash tore its last line), a newline is written first, so the new lines stay lines of
    their own and only the torn one is lost (:func:`read_jsonl` skips it). Serialised with ``orjson`` when it is
    installed, else ``json``; ``default`` converts what neither knows (as their ``default=``).
    """
    objs = [obj_or_objs] if isinstance(obj_or_objs, Mapping) else list(obj_or_objs)
    if not objs:
        return 0
    data = b"".join(_dumps(obj, default) + b"\n" for obj in objs)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return len(objs)


def read_jsonl(path: str | os.PathLike[str], *, skip_torn_last: bool = True,
               torn_prefix: str | None = None) -> Iterator[Any]:
    """The JSON values of the JSONL file ``path``, one per non-blank line, in order.

    A line that is not JSON raises :class:`ValueError` naming ``file:line`` and the problem, except (with
    ``skip_torn_last``) the last line, which is what a writer that crashed mid-line leaves behind, and any line
    starting with ``torn_prefix`` (the start every line of this log has, e.g. ``'{"event":'``): a torn line
    that a later :func:`append_jsonl` ended with a newline, so it can sit in the middle of the file.
    """
    lines = Path(path).read_bytes().splitlines()
    last = len(lines)
    while last and not lines[last - 1].strip():
        last -= 1
    prefix = torn_prefix.encode() if torn_prefix is not None else None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except RecursionError:
            raise ValueError(f"{path}:{number} is JSON nested too deeply to read (hostile or corrupt input)") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            if (skip_torn_last and number == last) or (prefix is not None and line.startswith(prefix)):
                continue
            raise ValueError(f"{path}:{number} is not JSON: {exc}") from None
        yield value
