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
