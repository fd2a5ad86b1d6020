"""`dspyo3 rag index|search|ask` on a small corpus of our own, with the loopback LM server for `ask`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dspyo3_core.testing import LMServer, chat_reply


@pytest.fixture
def env(tmp_path: Path, cli_env: dict[str, str]) -> dict[str, str]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.md").write_text("Cats purr when they are content. A cat sleeps up to sixteen hours a day.")
    (docs / "dogs.jsonl").write_text('{"id": "dog-1", "text": "Dogs bark at strangers.", "topic": "dogs"}\n'
                                     '{"id": "dog-2", "text": "Puppies chew shoes.", "topic": "dogs"}\n')
    # a DSPy disk cache of our own: a cached answer from an earlier run would skip the LM server
    return {**cli_env, "DSPYO3_RAG_DIR": str(tmp_path / "store"), "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")}


def run(exe: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "rag", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_index_search_and_bad_input(tmp_path: Path, env: dict[str, str], dspyo3_exe: str) -> None:
    done = run(dspyo3_exe, env, "index", str(tmp_path / "docs"), "--collection", "pets")
    assert done.returncode == 0, done.stderr
    assert "indexed 3 chunks into 'pets'" in done.stdout
    found = run(dspyo3_exe, env, "search", "why do cats purr", "--collection", "pets", "--k", "2", "--json")
    hits = json.loads(found.stdout)
    assert hits[0]["id"] == "docs/cats.md#0" and hits[0]["metadata"]["source"].endswith("cats.md")
    bm25 = run(dspyo3_exe, env, "search", "puppies", "--collection", "pets", "--retriever", "bm25", "--json")
    top = json.loads(bm25.stdout)[0]
    source = str(tmp_path / "docs" / "dogs.jsonl")
    assert (top["id"], top["text"], top["metadata"]) == ("dog-2", "Puppies chew shoes.",
                                                         {"topic": "dogs", "source": source})

    (tmp_path / "bad.jsonl").write_text('{"id": "x", "text": "fine"}\nnot json\n')
    bad = run(dspyo3_exe, env, "index", str(tmp_path / "bad.jsonl"), "--collection", "pets")
    assert bad.returncode == 1 and "bad.jsonl:2: not JSON" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    bad = run(dspyo3_exe, env, "index", str(tmp_path / "latin1.txt"), "--collection", "pets")
    assert bad.returncode == 1 and "cannot be read as UTF-8" in bad.stderr
    again = run(dspyo3_exe, env, "search", "x", "--collection", "pets", "--retriever", "bm25", "--k", "10", "--json")
    assert len(json.loads(again.stdout)) <= 3, "the rejected index calls left the collection as it was"
    unknown = run(dspyo3_exe, env, "search", "cats", "--collection", "nope")
    assert unknown.returncode == 1 and "create it with: dspyo3 rag index PATH --collection nope" in unknown.stderr


def test_ask_answers_with_the_configured_lm_and_cites(tmp_path: Path, env: dict[str, str], dspyo3_exe: str) -> None:
    assert run(dspyo3_exe, env, "index", str(tmp_path / "docs"), "--collection", "pets").returncode == 0
    no_lm = run(dspyo3_exe, env, "ask", "why do cats purr?", "--collection", "pets")
    assert no_lm.returncode == 1 and "no LM profile is configured" in no_lm.stderr
    with LMServer() as server:
        server.script(chat_reply(reasoning="the passage says so", answer="Because they are content.",
                                 cited_ids=["docs/cats.md#0"]))
        lm_env = {**env, "DSPYO3_LM": "openai/test", "DSPYO3_LM_API_BASE": server.api_base,
                  "DSPYO3_LM_API_KEY": "test"}
        done = run(dspyo3_exe, lm_env, "ask", "why do cats purr?", "--collection", "pets")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["Because they are content.", "sources: docs/cats.md#0"]
        prompt = json.dumps(server.requests[0]["messages"])
        assert "Cats purr when they are content" in prompt, "the retrieved passage was in the prompt"


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_corrupt_chunks_file_is_a_one_line_error_naming_the_line(tmp_path: Path, env: dict[str, str],
                                                                  dspyo3_exe: str) -> None:
    assert run(dspyo3_exe, env, "index", str(tmp_path / "docs"), "--collection", "pets").returncode == 0
    chunks = tmp_path / "store" / "pets" / "chunks.jsonl"
    good = chunks.read_bytes().splitlines(keepends=True)
    assert len(good) == 3
    for bad_line, problem in ((good[2][:25] + b"\n", "not JSON"),                 # cut short
                              (b"\xff\xfe\x00\x01binary\n", "not JSON"),         # not text
                              (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
                              (b'{"id": 7, "text": "x"}\n', "not a chunk record")):
        chunks.write_bytes(good[0] + good[1] + bad_line)
        commands = [("search", "cats", "--collection", "pets", "--retriever", "bm25")]
        if problem == "not JSON":
            commands += [("search", "cats", "--collection", "pets"), ("index", str(tmp_path / "docs"),
                                                                      "--collection", "pets")]
        for args in commands:
            error = _one_line_error(run(dspyo3_exe, env, *args))
            assert f"{chunks}:3: " in error and problem in error, error
            assert "dspyo3 rag index --collection pets" in error
        assert chunks.read_bytes() == good[0] + good[1] + bad_line, "the bad file was left for the user to fix"
    # the fix the error gives: drop the line, then let index drop its vectors
    chunks.write_bytes(good[0] + good[1])
    repaired = run(dspyo3_exe, env, "index", "--collection", "pets")
    assert repaired.returncode == 0 and repaired.stdout.startswith("repaired 'pets': removed 1 "), repaired.stdout
    found = run(dspyo3_exe, env, "search", "x", "--collection", "pets", "--retriever", "dense", "--k", "10", "--json")
    assert len(json.loads(found.stdout)) == 2


def test_a_corrupt_qdrant_meta_file_is_a_one_line_error_and_rebuild_fixes_it(tmp_path: Path, env: dict[str, str],
                                                                             dspyo3_exe: str) -> None:
    assert run(dspyo3_exe, env, "index", str(tmp_path / "docs"), "--collection", "pets",
               "--store", "qdrant").returncode == 0
    before = run(dspyo3_exe, env, "search", "cats purr", "--collection", "pets", "--json").stdout
    meta = tmp_path / "store" / "pets" / "qdrant" / "meta.json"
    whole = meta.read_bytes()
    for corrupt in (whole[: len(whole) // 2], b"\x00\xff" * 50, b"[" * 100_000, b'{"aliases": {}}'):
        meta.write_bytes(corrupt)
        commands = [("search", "cats", "--collection", "pets")]
        if corrupt == b'{"aliases": {}}':
            commands.append(("index", str(tmp_path / "docs"), "--collection", "pets"))
        for args in commands:
            error = _one_line_error(run(dspyo3_exe, env, *args))
            assert f"{meta} is corrupt" in error and "dspyo3 rag index --rebuild --collection pets" in error, error
    rebuilt = run(dspyo3_exe, env, "index", "--rebuild", "--collection", "pets")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert run(dspyo3_exe, env, "search", "cats purr", "--collection", "pets", "--json").stdout == before
