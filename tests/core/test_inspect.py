"""``dspyo3 inspect``: predictors, signatures with Python-annotation types, demos, and saved programs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PROGRAM = '''
from typing import Literal, Optional

import dspy
import pydantic


class Citation(pydantic.BaseModel):
    title: str
    year: int


class Answer(dspy.Signature):
    """Answer the question from the passages."""

    question: str = dspy.InputField(desc="the user question")
    passages: list[str] = dspy.InputField()
    max_words: Optional[int] = dspy.InputField(desc="length limit")
    answer: str = dspy.OutputField()
    verdict: Literal["supported", "refuted"] = dspy.OutputField(desc="is the claim supported")
    citations: list[Citation] = dspy.OutputField()
    scores: dict[str, float] = dspy.OutputField()


class RAG(dspy.Module):
    def __init__(self):
        super().__init__()
        self.rewrite = dspy.Predict("question -> query")
        self.answer = dspy.ChainOfThought(Answer)

    def forward(self, question):
        return self.answer(question=question, passages=[], max_words=None)


class NeedsArgs(dspy.Module):
    def __init__(self, k):
        super().__init__()
        self.p = dspy.Predict("a -> b")


program = RAG()
program.rewrite.demos = [dspy.Example(question="q1", query="x1"), dspy.Example(question="q2", query="x2")]
not_a_module = 42
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myprog.py").write_text(PROGRAM)
    return tmp_path


def inspect(exe: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "inspect", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_instance_json_shape(project: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = inspect(dspyo3_exe, cli_env, project, "myprog:program", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    predictors = {p["name"]: p for p in report["predictors"]}
    assert set(predictors) == {"rewrite", "answer.predict"}
    assert predictors["rewrite"]["demos"] == 2
    answer = predictors["answer.predict"]
    assert set(answer) == {"name", "signature", "demos"}
    signature = answer["signature"]
    assert signature["instructions"] == "Answer the question from the passages."
    inputs = {f["name"]: f for f in signature["inputs"]}
    outputs = {f["name"]: f for f in signature["outputs"]}
    assert inputs["question"] == {"name": "question", "type": "str", "desc": "the user question", "ty": {"kind": "str"}}
    assert inputs["passages"]["type"] == "list[str]"
    assert inputs["passages"]["desc"] == ""
    assert inputs["max_words"]["type"] == "Optional[int]"
    assert outputs["verdict"]["type"] == "Literal['supported', 'refuted']"
    assert outputs["citations"]["type"] == "list[Citation]"
    assert outputs["scores"]["type"] == "dict[str, float]"
    assert next(iter(outputs)) == "reasoning"  # ChainOfThought prepends it
    # the signature IR next to the readable type
    assert inputs["max_words"]["ty"] == {"kind": "optional", "inner": {"kind": "int"}}
    assert outputs["verdict"]["ty"] == {"kind": "literal", "name": None, "values": ["supported", "refuted"]}
    assert outputs["citations"]["ty"]["item"]["kind"] == "model"
    assert outputs["citations"]["ty"]["item"]["name"] == "Citation"


def test_class_target_is_instantiated(project: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = inspect(dspyo3_exe, cli_env, project, "myprog:RAG", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictors"]) == 2


def test_signature_target(project: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = inspect(dspyo3_exe, cli_env, project, "myprog:Answer", "--json")
    predictor = json.loads(result.stdout)["predictors"][0]
    assert [f["name"] for f in predictor["signature"]["outputs"]] == ["answer", "verdict", "citations", "scores"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("myprog", "must be package.module:attribute"),
        ("nosuchmodule:x", "cannot import 'nosuchmodule'"),
        ("myprog:missing", "has no attribute 'missing'"),
        ("myprog:not_a_module", "is a int, not a dspy.Module"),
        ("myprog:NeedsArgs", "constructor needs arguments"),
        ("absent.json", "absent.json does not exist"),
    ],
)
def test_bad_targets_say_what_is_wrong(
    project: Path, cli_env: dict[str, str], dspyo3_exe: str, target: str, message: str
) -> None:
    result = inspect(dspyo3_exe, cli_env, project, target, "--json")
    assert result.returncode != 0
    assert message in result.stderr


def test_saved_program_json(project: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    saver = "import myprog; myprog.program.save('saved.json')"
    python = str(Path(dspyo3_exe).parent / "python")
    subprocess.run([python, "-c", saver], cwd=project, env=cli_env, check=True, timeout=120)
    alone = json.loads(inspect(dspyo3_exe, cli_env, project, "saved.json", "--json").stdout)
    predictors = {p["name"]: p for p in alone["predictors"]}
    assert predictors["rewrite"]["demos"] == 2
    assert [f["name"] for f in predictors["rewrite"]["signature"]["fields"]] == ["question", "query"]
    assert "pass --program" in alone["note"]
    full = inspect(dspyo3_exe, cli_env, project, "saved.json", "--program", "myprog:RAG", "--json")
    assert full.returncode == 0, full.stderr
    predictors = {p["name"]: p for p in json.loads(full.stdout)["predictors"]}
    assert predictors["rewrite"]["demos"] == 2
    assert predictors["answer.predict"]["signature"]["inputs"][1]["type"] == "list[str]"


def test_human_output(project: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = inspect(dspyo3_exe, cli_env, project, "myprog:program")
    assert result.returncode == 0, result.stderr
    assert "verdict: Literal['supported', 'refuted']" in result.stdout
