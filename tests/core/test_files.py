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
