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


_WRITER = """
import os, sys, time
from dspyo3_core import files
real_fsync = os.fsync
def slow_fsync(fd):  # the temporary file is written and locked: say so, then hang until killed
    real_fsync(fd)
    if not os.path.isdir(f"/proc/self/fd/{fd}"):
        print("writing", flush=True)
        time.sleep(60)
files.os.fsync = slow_fsync
files.atomic_write_bytes(sys.argv[1], b"x" * 100_000)
"""


def test_temporaries_left_by_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "reg" / "meta.json"
    killed = []
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        killed.append(writer)
    leftovers = sorted(p.name for p in target.parent.iterdir())
    assert len(leftovers) == 3 and all(name.startswith(".meta.json.") and name.endswith(".tmp") for name in leftovers)
    # a live writer's temporary, and a fresh one of any writer, are never touched
    live = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline() == "writing\n"
        old = time.time() - 3600
        for path in target.parent.iterdir():
            os.utime(path, (old, old))  # all look stale by age; only the lock tells the live one apart
        (target.parent / ".other.json.abcdefgh.tmp").write_bytes(b"fresh")  # young: left alone
        (target.parent / "notes.tmp").write_bytes(b"not ours")  # not our naming: left alone
        atomic_write_text(target.parent / "stages.json", "{}")  # any write into the directory cleans it
        names = sorted(p.name for p in target.parent.iterdir())
        ours = [n for n in names if n.startswith(".meta.json.")]
        assert len(ours) == 1  # the live writer's
        assert ".other.json.abcdefgh.tmp" in names and "notes.tmp" in names and "stages.json" in names
    finally:
        live.kill()
        live.wait()
    old = time.time() - 3600
    os.utime(target.parent / ".other.json.abcdefgh.tmp", (old, old))
    assert files.clean_stale_temporaries(target.parent) == 2  # the killed live writer's, and the aged one
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.tmp", "stages.json"]


def test_deeply_nested_json_is_a_value_error_naming_the_source(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match=r"^checkpoint\.json: JSON nested too deeply"):
        files.loads_json(deep, source="checkpoint.json")
    log = tmp_path / "t.jsonl"
    log.write_text('{"event": "start"}\n' + deep + '\n{"event": "end"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2 is JSON nested too deeply"):
        list(files.read_jsonl(log))
