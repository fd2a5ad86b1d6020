"""Saved program state is data: only learned state is applied; LM settings, attributes and code are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_core.inspector import InspectError, inspect_target
from dspyo3_core.program_state import UnsafeStateError, apply_state, check_state, learned_state, load_state_file

ATTACKER = "http://127.0.0.1:9/v1"


class QA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.ChainOfThought("question -> answer")


def _saved(tmp_path: Path, program: Any) -> Path:
    path = tmp_path / "program.json"
    program.save(str(path))
    return path


def test_a_state_dspy_saved_loads_and_its_learned_state_is_applied(tmp_path: Path) -> None:
    program = QA()
    program.answer.predict.demos = [dspy.Example(question="q", answer="a")]
    program.answer.predict.signature = program.answer.predict.signature.with_instructions("Be brief.")
    state = load_state_file(_saved(tmp_path, program), program=QA())
    assert "metadata" not in state  # DSPy's dependency versions are not applied
    loaded = apply_state(QA(), state, source="x")
    assert loaded.answer.predict.signature.instructions == "Be brief."
    assert loaded.answer.predict.demos[0]["answer"] == "a"


@pytest.mark.parametrize(("entry", "value", "named"), [
    ("config", {"api_base": ATTACKER}, "answer.predict.config"),
    ("lm", {"model": "openai/gpt-4o", "api_base": ATTACKER, "headers": {"x": "y"}}, "answer.predict.lm"),
    ("callbacks", [], "answer.predict.callbacks"),
    ("stage", "x", "answer.predict.stage"),
])
def test_anything_but_learned_state_is_refused_naming_the_key_and_file(tmp_path: Path, entry: str, value: Any,
                                                                     named: str) -> None:
    path = _saved(tmp_path, QA())
    data = json.loads(path.read_text())
    data["answer.predict"][entry] = value
    path.write_text(json.dumps(data))
    with pytest.raises(UnsafeStateError, match=rf"{path}: key '{named}'"):
        load_state_file(path, program=QA())
    program = QA()
    with pytest.raises(UnsafeStateError):
        apply_state(program, data, source=str(path))
    assert getattr(program.answer.predict, "config", {}) == {} and program.answer.predict.lm is None


def test_signature_retriever_and_unknown_entries_are_checked(tmp_path: Path) -> None:
    state = learned_state(QA().dump_state())
    bad_sig = json.loads(json.dumps(state))
    bad_sig["answer.predict"]["signature"]["fields"][0]["json_schema_extra"] = {"x": 1}
    with pytest.raises(UnsafeStateError, match=r"answer\.predict\.signature\.fields\[0\]\.json_schema_extra"):
        check_state(bad_sig, source="f.json", program=QA())
    check_state({**state, "retrieve": {"k": 3}}, source="f.json")  # a retriever's k is learned state
    with pytest.raises(UnsafeStateError, match=r"retrieve\.callbacks"):
        check_state({**state, "retrieve": {"k": 3, "callbacks": ["x"]}}, source="f.json")
    extra = {**state, "flex": {"module_src": "import os"}}
    with pytest.raises(UnsafeStateError, match="'flex' names no predictor of QA"):
        check_state(extra, source="f.json", program=QA())
    with pytest.raises(UnsafeStateError, match="module_src"):
        check_state(extra, source="f.json")  # without the program: still not learned state
    with pytest.raises(UnsafeStateError, match="not a list"):
        check_state([], source="f.json")


def test_learned_state_drops_lm_settings_so_a_saved_program_round_trips() -> None:
    program = dspy.Predict("question -> answer")
    program.lm = dspy.LM("openai/x", api_base=ATTACKER, api_key="sk-not-saved-anyway")
    state = learned_state(program.dump_state())
    assert state["lm"] is None
    check_state(state, source="x", program=dspy.Predict("question -> answer"))


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=rf"{path}.*nested too deeply"):
        load_state_file(path)
    with pytest.raises(InspectError, match="nested too deeply"):
        inspect_target(str(path))


def test_inspect_with_a_program_refuses_a_hostile_state(tmp_path: Path) -> None:
    (tmp_path / "hostile_prog.py").write_text("import dspy\nclass P(dspy.Module):\n    def __init__(self):\n"
                                             "        super().__init__()\n        self.p = dspy.Predict('q -> a')\n")
    path = tmp_path / "p.json"
    state = {"p": {**learned_state(dspy.Predict("q -> a").dump_state()), "config": {"api_base": ATTACKER}}}
    path.write_text(json.dumps(state))
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(InspectError, match=r"key 'p\.config'"):
            inspect_target(str(path), program="hostile_prog:P")
    finally:
        sys.path.remove(str(tmp_path))


def test_types_codegen_refuses_a_hostile_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_types.codegen import signatures_of

    (tmp_path / "hostile_prog2.py").write_text("import dspy\nclass P(dspy.Module):\n    def __init__(self):\n"
                                              "        super().__init__()\n        self.p = dspy.Predict('q -> a')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "p.json"
    clean = {"p": learned_state(dspy.Predict("q -> a").dump_state())}
    path.write_text(json.dumps(clean))
    assert signatures_of(str(path), program="hostile_prog2:P")  # learned state loads
    path.write_text(json.dumps({"p": {**clean["p"], "config": {"api_base": ATTACKER}}}))
    with pytest.raises(InspectError, match=r"key 'p\.config'"):
        signatures_of(str(path), program="hostile_prog2:P")
