"""`dspyo3 rag index` over real folders: every Markdown/text suffix in any case, what was skipped and why, chunk ids
that do not depend on how a path was spelled; `rag eval --plot` without matplotlib and with an unwritable plot;
progress bars on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from dspyo3_rag.plugin import rag_group

KEYS = {"retriever", "dataset", "ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "qps"}


def _env(tmp_path: Path, cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "DSPYO3_RAG_DIR": str(tmp_path / "store")}


def _rag(exe: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "rag", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _ids(exe: str, env: dict[str, str], collection: str) -> list[str]:
    done = _rag(exe, env, "search", "word", "--collection", collection, "--retriever", "bm25", "--k", "100", "--json")
    assert done.returncode == 0, done.stderr
    return sorted(hit["id"] for hit in json.loads(done.stdout))


def test_index_reads_every_markdown_and_text_suffix_and_says_what_it_skipped(tmp_path: Path, dspyo3_exe: str,
                                                                              cli_env: dict[str, str]) -> None:
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / ".git").mkdir()
    (notes / ".git" / "config").write_text("word in git config")
    for name in ["a.md", "b.MD", "c.markdown", "sub/d.mdx", "e.TXT", "f.rst", "g.Jsonl"]:
        content = '{"text": "word jsonl"}\n' if name.endswith("Jsonl") else f"word from {name}"
        (notes / name).write_text(content)
    (notes / "h.pdf").write_bytes(b"%PDF-1.4 word")
    (notes / "Makefile").write_text("word:")
    (notes / "empty.md").write_text("  \n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.md").write_text("word elsewhere")
    (notes / "linked").symlink_to(tmp_path / "elsewhere")
    env = _env(tmp_path, cli_env)
    done = _rag(dspyo3_exe, env, "index", str(notes), "--collection", "kb")
    assert done.returncode == 0, done.stderr
    assert "indexed 7 chunks into 'kb'" in done.stdout and "skipped 5 files" in done.stdout
    assert f"skipped {notes / 'h.pdf'}: suffix '.pdf' is not indexed" in done.stderr
    assert f"skipped {notes / 'Makefile'}: no suffix is not indexed" in done.stderr
    assert f"skipped {notes / '.git'}: hidden folder" in done.stderr
    assert f"skipped {notes / 'empty.md'}: no text in it" in done.stderr
    assert f"skipped {notes / 'linked'}: symbolic link to a folder (not followed" in done.stderr
    assert _ids(dspyo3_exe, env, "kb") == ["notes/a.md#0", "notes/b.MD#0", "notes/c.markdown#0", "notes/e.TXT#0",
                                           "notes/f.rst#0", "notes/g.Jsonl:1", "notes/sub/d.mdx#0"]

    (tmp_path / "only.pdf").write_bytes(b"%PDF")
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "pdfs" / "x.pdf").write_bytes(b"%PDF")
    nothing = _rag(dspyo3_exe, env, "index", str(tmp_path / "pdfs"), "--collection", "kb")
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    assert "no files to index" in nothing.stderr and "x.pdf (suffix '.pdf' is not indexed" in nothing.stderr


def test_chunk_ids_do_not_depend_on_how_the_path_was_spelled(tmp_path: Path, dspyo3_exe: str,
                                                            cli_env: dict[str, str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keys.md").write_text("rotate the word keys every month")
    (notes / "more.md").write_text("another word here")
    env = _env(tmp_path, cli_env)
    spellings = [("notes", tmp_path), ("./notes/", tmp_path), (str(notes), tmp_path / "store"), (".", notes),
                 ("../notes", notes)]
    for n, (spelled, cwd) in enumerate(spellings):
        done = _rag(dspyo3_exe, env, "index", spelled, "--collection", f"c{n}", cwd=cwd)
        assert done.returncode == 0, done.stderr
        assert _ids(dspyo3_exe, env, f"c{n}") == ["notes/keys.md#0", "notes/more.md#0"], spelled

    # the file on its own, after its folder: it keeps its id (replaced, not added a second time)
    (notes / "keys.md").write_text("rotate the word keys every week")
    for spelled, cwd in [("notes/keys.md", tmp_path), ("keys.md", notes), (str(notes / "keys.md"), tmp_path)]:
        done = _rag(dspyo3_exe, env, "index", spelled, "--collection", "c0", cwd=cwd)
        assert done.returncode == 0, done.stderr
        assert "(2 in all)" in done.stdout, done.stdout
        assert _ids(dspyo3_exe, env, "c0") == ["notes/keys.md#0", "notes/more.md#0"], spelled
    found = _rag(dspyo3_exe, env, "search", "week", "--collection", "c0", "--retriever", "bm25", "--json")
    assert json.loads(found.stdout)[0]["text"] == "rotate the word keys every week"

    # a file indexed first on its own keeps its name when its folder is indexed later
    assert _rag(dspyo3_exe, env, "index", "keys.md", "--collection", "solo", cwd=notes).returncode == 0
    assert _rag(dspyo3_exe, env, "index", "notes", "--collection", "solo", cwd=tmp_path).returncode == 0
    assert _ids(dspyo3_exe, env, "solo") == ["keys.md#0", "notes/more.md#0"]


def test_a_file_of_the_same_name_from_elsewhere_does_not_overwrite_another_files_chunks(
        tmp_path: Path, dspyo3_exe: str, cli_env: dict[str, str]) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "keys.md").write_text(f"word from folder {folder}")
    env = _env(tmp_path, cli_env)
    assert _rag(dspyo3_exe, env, "index", str(tmp_path / "one" / "keys.md"), "--collection", "kb").returncode == 0
    clash = _rag(dspyo3_exe, env, "index", str(tmp_path / "two" / "keys.md"), "--collection", "kb")
    assert clash.returncode == 1 and "Traceback" not in clash.stderr
    assert (f"chunk id 'keys.md#0' of {tmp_path / 'two' / 'keys.md'} already belongs to "
            f"{tmp_path / 'one' / 'keys.md'}") in clash.stderr
    found = _rag(dspyo3_exe, env, "search", "word", "--collection", "kb", "--retriever", "bm25", "--json")
    assert [hit["text"] for hit in json.loads(found.stdout)] == ["word from folder one"]
    assert _rag(dspyo3_exe, env, "index", str(tmp_path / "two"), "--collection", "kb").returncode == 0
    assert _ids(dspyo3_exe, env, "kb") == ["keys.md#0", "two/keys.md#0"]


def _tiny_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [("d1", "cats purr and sleep"), ("d2", "dogs bark loudly"), ("d3", "birds sing at dawn")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": x}) + "\n" for i, x in docs))
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "which animal purrs"}\n'
                                        '{"_id": "q2", "text": "animals that bark"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return root


def test_plot_without_matplotlib_fails_before_the_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dspyo3_rag.evaluation

    calls = []
    monkeypatch.setattr(dspyo3_rag.evaluation, "evaluate_retriever", lambda *a, **kw: calls.append(a) or {})
    for module in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, module, None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(rag_group, ["eval", "--data", str(_tiny_beir(tmp_path / "tiny")), "--plot",
                                            str(tmp_path / "m.png")])
    assert result.exit_code == 1
    assert "Error: --plot needs matplotlib" in result.output
    from dspyo3_core.failures import install_advice

    # from a checkout: pip install '.../packages/rag[plot]'
    assert install_advice("dspyo3-rag", "plot") in result.output
    assert calls == [], "the evaluation did not run"
    assert not isinstance(result.exception, ImportError)


def test_the_plot_extra_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).resolve().parents[2] / "packages" / "rag" / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("matplotlib") for req in extras["plot"])


def test_results_are_printed_before_a_plot_that_cannot_be_written(tmp_path: Path, dspyo3_exe: str,
                                                                   cli_env: dict[str, str]) -> None:
    done = _rag(dspyo3_exe, cli_env, "eval", "--data", str(_tiny_beir(tmp_path / "tiny")), "--k", "10", "--json",
                "--plot", str(tmp_path / "missing" / "m.png"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert set(json.loads(done.stdout.strip().splitlines()[-1])) == KEYS
    assert f"cannot write the plot {tmp_path / 'missing' / 'm.png'}" in done.stderr


def _on_a_terminal(exe: str, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run ``dspyo3 rag ARGS`` with stderr on a pseudo-terminal; (exit code, stdout, what the terminal got)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([exe, "rag", *args], stdout=subprocess.PIPE, stderr=follower, env=env, text=True)
    os.close(follower)
    got = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            got.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(leader)
    return proc.returncode, out, got.decode("utf-8", "replace")


def test_progress_bars_on_a_terminal_only(tmp_path: Path, dspyo3_exe: str, cli_env: dict[str, str]) -> None:
    data = str(_tiny_beir(tmp_path / "tiny"))
    env = {**_env(tmp_path, cli_env), "TERM": "xterm", "COLUMNS": "100"}
    code, out, terminal = _on_a_terminal(dspyo3_exe, env, "eval", "--data", data, "--retriever", "dense", "--k",
                                         "10", "--json")
    assert code == 0, terminal
    assert "embedding" in terminal and "retrieving" in terminal
    assert set(json.loads(out.strip().splitlines()[-1])) == KEYS, "stdout stays clean"
    code, _, terminal = _on_a_terminal(dspyo3_exe, env, "eval", "--data", data, "--retriever", "dense", "--k",
                                       "10", "--no-progress")
    assert code == 0 and "retrieving" not in terminal and "embedding" not in terminal
    piped = _rag(dspyo3_exe, env, "eval", "--data", data, "--retriever", "dense", "--k", "10")
    assert piped.returncode == 0 and "retrieving" not in piped.stderr and "embedding" not in piped.stderr

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("some words to embed")
    code, out, terminal = _on_a_terminal(dspyo3_exe, env, "index", str(tmp_path / "docs"), "--collection", "kb")
    assert code == 0, terminal
    assert "embedding" in terminal and "indexed 1 chunks" in out


def test_a_moved_folder_is_indexed_again_under_its_ids(tmp_path: Path, dspyo3_exe: str,
                                                        cli_env: dict[str, str]) -> None:
    (tmp_path / "a" / "docs").mkdir(parents=True)
    (tmp_path / "a" / "docs" / "keys.md").write_text("word: rotate keys every ninety days")
    env = _env(tmp_path, cli_env)
    assert _rag(dspyo3_exe, env, "index", str(tmp_path / "a" / "docs"), "--collection", "kb").returncode == 0
    (tmp_path / "a").rename(tmp_path / "b")
    moved = _rag(dspyo3_exe, env, "index", str(tmp_path / "b" / "docs"), "--collection", "kb")
    assert moved.returncode == 0, moved.stderr
    assert _ids(dspyo3_exe, env, "kb") == ["docs/keys.md#0"]
