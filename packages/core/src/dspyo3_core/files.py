"""Files written safely.

* Atomic writes: a reader sees the old file or the new one, never half of it, and the rename itself is made
  durable (the directory is fsync'd after ``os.replace``).
* JSONL logs: :func:`append_jsonl` appends whole lines (one ``O_APPEND`` write per call, so concurrent writers,
  threads or processes, interleave whole lines) and :func:`read_jsonl` reads them back, tolerating the line a
  crash cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_jsonl", "atomic_write_bytes", "atomic_write_text", "read_jsonl"]


def _fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so a rename inside it survives a power loss (a no-op where directories cannot be opened,
    e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'd, renamed over it, and the
    directory fsync'd.

    With ``exclusive``, the temporary file is hard-linked to ``path`` instead of renamed over it, so an existing
    file is never replaced: :class:`FileExistsError` (like ``O_EXCL``), and readers still never see a partial file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, target)
            Path(tmp).unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


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
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            if (skip_torn_last and number == last) or (prefix is not None and line.startswith(prefix)):
                continue
            raise ValueError(f"{path}:{number} is not JSON: {exc}") from None
        yield value
