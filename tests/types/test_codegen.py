"""The signature IR and the Rust / Pydantic / JSON-Schema code generated from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dspyo3_core.inspector import InspectError
from dspyo3_core.ir import UnsupportedTypeError, signature_ir, type_ir
from dspyo3_types.bridge import models_for
from dspyo3_types.codegen import generate, jsonschema_document, load_pydantic, rust_source, signatures_of
from dspyo3_types.validate import PredictionValidationError, validate_prediction

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from signatures import Everything  # noqa: E402

ROOT = HERE.parents[1]


def test_ir_of_every_supported_type() -> None:
    ir = signature_ir(Everything)
    assert ir["name"] == "Everything" and ir["instructions"] == "Exercise every supported type."
    fields = {f["name"]: f for f in ir["inputs"] + ir["outputs"]}
    assert fields["text"]["desc"] == "the text"
    assert fields["pair"]["ty"] == {"kind": "tuple", "items": [{"kind": "int"}, {"kind": "str"}]}
    assert fields["maybe"]["ty"] == {"kind": "optional", "inner": {"kind": "int"}}
    assert fields["color"]["ty"]["members"] == [{"name": "RED", "value": "red"},
                                                {"name": "DARK_BLUE", "value": "dark blue"}]
    entity = fields["entity"]["ty"]
    assert entity["kind"] == "model" and entity["doc"] == "A named thing."
    assert entity["fields"][0] == {"name": "name", "desc": "surface form", "ty": {"kind": "str"}, "required": True}
    assert entity["fields"][3]["required"] is False and entity["fields"][3]["default"] is None
    tree = fields["tree"]["ty"]
    assert tree["fields"][1]["ty"] == {"kind": "list", "item": {"kind": "ref", "name": "Tree", "id": tree["id"]}}
    assert tree["id"].endswith("signatures.Tree")
    assert fields["when"]["ty"] == {"kind": "datetime"} and fields["extra"]["ty"] == {"kind": "any"}


@pytest.mark.parametrize(("annotation", "why"), [
    (int | str, "unions of several types"),
    (dict[int, str], "dict keys must be str"),
    (set[int], "supported:"),
])
def test_unsupported_annotations_name_the_field_and_type(annotation: object, why: str) -> None:
    with pytest.raises(UnsupportedTypeError) as info:
        type_ir(annotation, field="answer")
    assert str(info.value).startswith("field `answer`: type ") and why in str(info.value)


def test_rust_source_shapes() -> None:
    code = rust_source([signature_ir(Everything)])
    assert "pub struct EverythingInput {" in code and "pub struct EverythingOutput {" in code
    assert "#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]" in code
    assert "pub struct Entity {" in code and "pub children: Vec<Tree>," in code
    assert '#[serde(rename = "dark blue")]\n    DarkBlue,' in code
    assert "pub r#type: String," in code
    assert "pub maybe: Option<i64>," in code and "pub pair: (i64, String,)," in code
    assert "/// Exercise every supported type." in code and "/// surface form" in code


def test_pydantic_and_jsonschema_agree_with_the_signature() -> None:
    models = load_pydantic([signature_ir(Everything)])
    output = models["EverythingOutput"]
    assert set(output.model_fields) == set(Everything.output_fields)
    schema = jsonschema_document([signature_ir(Everything)])["EverythingOutput"]
    assert schema["properties"]["mood"]["enum"] == ["happy", "sad"]
    assert "Entity" in schema["$defs"] and "Tree" in schema["$defs"]
    entity = models["Entity"].model_validate({"name": "Acme", "type": "org", "salience": 1})
    assert entity.aliases is None
    inputs, outputs = models_for(Everything)
    assert inputs.__name__ == "EverythingInput" and outputs.__name__ == "EverythingOutput"


def test_validate_prediction_names_field_type_and_value() -> None:
    import dspy

    good = dspy.Prediction(entity={"name": "A", "type": "org", "salience": 0.5}, entities=[], mood="happy",
                           tree={"label": "root"}, extra=None, type="x", maybe_entity=None)
    assert validate_prediction(good, Everything)["tree"].children == []
    bad = dspy.Prediction(entity={"name": "A", "type": "robot", "salience": 0.5}, entities=[], mood="angry",
                          tree={"label": "root"}, extra=1, type="x")
    with pytest.raises(PredictionValidationError) as info:
        validate_prediction(bad, Everything)
    text = str(info.value)
    assert "`mood`: expected Literal['happy', 'sad'], got 'angry'" in text
    assert "`entity`: expected Entity" in text and "'robot'" in text
    assert "`maybe_entity`" in text and "missing" in text


def test_cli_codegen_writes_atomically_and_refuses_unsupported_types(tmp_path: Path, dspyo3_exe: str,
                                                                      cli_env: dict[str, str]) -> None:
    def _dspyo3(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {**cli_env, "PYTHONPATH": str(HERE)}
        return subprocess.run([dspyo3_exe, *args], capture_output=True, text=True, cwd=cwd, env=env)

    (tmp_path / "bad_sig.py").write_text(
        "import dspy\nclass Bad(dspy.Signature):\n    question: str = dspy.InputField()\n"
        "    answer: int | str = dspy.OutputField()\n")
    out = tmp_path / "gen" / "everything.rs"
    done = _dspyo3("types", "codegen", "signatures:Everything", "--lang", "rust", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith("// Generated by `dspyo3 types codegen signatures:Everything --lang rust`")
    assert [p.name for p in out.parent.iterdir()] == ["everything.rs"], "no temporary file left behind"
    bad = _dspyo3("types", "codegen", "bad_sig:Bad", "--lang", "rust", cwd=tmp_path)
    assert bad.returncode == 1
    assert "field `answer`: type Union[int, str] is not supported" in bad.stderr
    assert "Traceback" not in bad.stderr
    schema = _dspyo3("types", "codegen", "signatures:Everything", "--lang", "jsonschema", cwd=tmp_path)
    assert json.loads(schema.stdout)["EverythingInput"]["required"][0] == "text"


def test_codegen_of_a_saved_program_needs_its_class(tmp_path: Path) -> None:
    import dspy

    (tmp_path / "prog.py").write_text(
        "import dspy\nfrom signatures import Everything\n"
        "class Prog(dspy.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.step = dspy.ChainOfThought(Everything)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from prog import Prog  # type: ignore[import-not-found]

        Prog().save(str(tmp_path / "prog.json"))
        with pytest.raises(Exception, match="pass --program"):
            signatures_of(str(tmp_path / "prog.json"))
        (sig,) = signatures_of(str(tmp_path / "prog.json"), program="prog:Prog")
        assert sig["outputs"][0]["name"] == "reasoning"
        assert sig["name"] == "StepPredict", "a predictor's extended signature is named after its path"
        assert "pub struct StepPredictOutput" in generate([sig], "rust")
        for name, text in (("deep.json", "[" * 100_000 + "]" * 100_000), ("cut.json", '{"step": {"demos": ['),
                           ("foreign.json", '{"other": 1}')):
            (tmp_path / name).write_text(text)
            with pytest.raises(InspectError, match=re.escape(f"{name}: ") + ".*not a saved program"):
                signatures_of(str(tmp_path / name), program="prog:Prog")
        with pytest.raises(InspectError, match=r"missing\.json: cannot read it"):
            signatures_of(str(tmp_path / "missing.json"), program="prog:Prog")
    finally:
        sys.path.remove(str(tmp_path))
    assert dspy is not None


@pytest.mark.slow
def test_dspyo3_mode_compiles_against_the_crate(tmp_path: Path) -> None:
    """`--dspyo3` output is usable with #[derive(Signature)]: cargo check of a crate that includes it."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed")
    (tmp_path / "src").mkdir()
    (tmp_path / "Cargo.toml").write_text(
        '[package]\nname = "uses_dspyo3"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n'
        f'dspyo3 = {{ path = "{ROOT / "crates" / "dspyo3"}" }}\n'
        'serde = { version = "1", features = ["derive"] }\nserde_json = "1"\n\n[workspace]\n')
    from signatures import Awkward

    code = generate([signature_ir(Everything), signature_ir(Awkward)], "rust", derive_dspyo3=True)
    assert "#[derive(dspyo3::Signature)]" in code and "#[input]" in code
    (tmp_path / "src" / "lib.rs").write_text(code + "\npub fn spec() -> dspyo3::SignatureSpec {\n"
                                             "    <Everything as dspyo3::Signature>::spec()\n}\n")
    env = {**os.environ, "CARGO_TARGET_DIR": str(ROOT / "crates" / "target")}
    check = subprocess.run(["cargo", "check", "--quiet", "--manifest-path", str(tmp_path / "Cargo.toml")],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
