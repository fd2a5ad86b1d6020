"""Atomic writes: bytes and text, no temporary files left behind, the directory fsync'd after the rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dspyo3_core import files
from dspyo3_core.files import atomic_write_bytes, atomic_write_text


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "blob.bin"
    assert atomic_write_bytes(target, b"\x00\xffone") == target
    assert target.read_bytes() == b"\x00\xffone"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "h\u00e9llo", encoding="latin-1")
    assert (tmp_path / "t.txt").read_bytes() == "h\u00e9llo".encode("latin-1")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["blob.bin"]  # no temporary file left


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d" / "f.txt"
    atomic_write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("write", [lambda p: atomic_write_bytes(p, b"x"), lambda p: atomic_write_text(p, "x")])
def test_directory_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: object) -> None:
    events: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files.os, "fsync", fsync)
    write(tmp_path / "x")  # type: ignore[operator]
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_exclusive_write_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "d" / "once.json"
    atomic_write_bytes(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == ["once.json"]


# -- JSONL --------------------------------------------------------------------------------------------------------

def test_append_jsonl_one_write_per_call_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_core.files import append_jsonl, read_jsonl

    path = tmp_path / "logs" / "events.jsonl"
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    assert append_jsonl(path, {"a": 1, "s": "h\u00e9"}) == 1
    assert append_jsonl(path, [{"b": 2}, [1, 2], "x"]) == 3
    assert append_jsonl(path, []) == 0
    assert len(writes) == 2 and writes[1].count(b"\n") == 3  # one write per call, whole lines
    assert list(read_jsonl(path)) == [{"a": 1, "s": "h\u00e9"}, {"b": 2}, [1, 2], "x"]


def test_append_jsonl_continues_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_core.files import append_jsonl, read_jsonl

    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))  # 3 bytes at a time
    path = tmp_path / "short.jsonl"
    append_jsonl(path, [{"key": "a longer value"}, {"n": 12345}])
    assert list(read_jsonl(path)) == [{"key": "a longer value"}, {"n": 12345}]


def test_append_jsonl_repairs_a_torn_last_line(tmp_path: Path) -> None:
    from dspyo3_core.files import append_jsonl, read_jsonl

    path = tmp_path / "torn.jsonl"
    append_jsonl(path, {"event": "start"})
    with open(path, "ab") as handle:  # a writer crashed mid-line
        handle.write(b'{"event": "st')
    assert list(read_jsonl(path)) == [{"event": "start"}]  # the torn last line is skipped
    with pytest.raises(ValueError, match=r"torn\.jsonl:2 is not JSON"):
        list(read_jsonl(path, skip_torn_last=False))
    append_jsonl(path, {"event": "finish"})
    assert path.read_bytes().count(b"\n") == 3  # the torn line was ended first, not glued to the new one
    with pytest.raises(ValueError, match=r"torn\.jsonl:2 is not JSON"):  # now in the middle: an error ...
        list(read_jsonl(path))
    assert list(read_jsonl(path, torn_prefix='{"event":')) == [{"event": "start"}, {"event": "finish"}]  # ... or not


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    from dspyo3_core.files import read_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n{"b": 2}\n\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3 is not JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n{"b": \n\n')  # the last non-blank line is torn: skipped
    assert list(read_jsonl(path)) == [{"a": 1}]
