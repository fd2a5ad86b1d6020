"""Values generated in Python survive Python -> JSON -> generated Rust serde types -> JSON -> Python unchanged.

The generated Rust is compiled with only serde and serde_json (plus serde_json's exact float parsing) in a small
cargo harness that reads `TypeName<TAB>json` lines and writes each value back re-serialized.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspyo3_core.ir import signature_ir, type_ir
from dspyo3_types.bridge import from_rust_json, to_rust_json
from dspyo3_types.codegen import load_pydantic, rust_source, signatures_of

sys.path.insert(0, str(Path(__file__).parent))
import signatures
from signatures import Awkward, Everything

ZONES = [datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
         datetime.timezone(datetime.timedelta(hours=-8))]
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=20)
JSON_VALUE = st.recursive(st.none() | st.booleans() | I64 | TEXT | st.floats(allow_nan=False, allow_infinity=False),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=6)


def strategy(spec: dict[str, Any], models: dict[str, dict[str, Any]] | None = None, depth: int = 0) -> Any:
    """A hypothesis strategy producing JSON-ready Python values of an IR type."""
    models = models if models is not None else {}
    kind = spec["kind"]
    simple = {"str": TEXT, "int": I64, "bool": st.booleans(), "any": JSON_VALUE,
              "float": st.floats(allow_nan=False, allow_infinity=False),
              "datetime": st.datetimes(timezones=st.none() | st.sampled_from(ZONES)).map(lambda d: d.isoformat()),
              "date": st.dates().map(lambda d: d.isoformat()),
              "time": st.times().map(lambda t: t.isoformat())}
    if kind in simple:
        return simple[kind]
    if kind == "list":
        return st.lists(strategy(spec["item"], models, depth + 1), max_size=3)
    if kind == "tuple":
        return st.tuples(*(strategy(item, models, depth + 1) for item in spec["items"])).map(list)
    if kind == "optional":
        return st.none() | strategy(spec["inner"], models, depth + 1)
    if kind == "dict":
        return st.dictionaries(TEXT, strategy(spec["value"], models, depth + 1), max_size=3)
    if kind == "literal":
        return st.sampled_from(spec["values"])
    if kind == "enum":
        return st.sampled_from([m["value"] for m in spec["members"]])
    if kind == "ref":
        spec = models[spec["id"]]
        if depth > 3:  # keep recursive models finite
            return st.fixed_dictionaries({f["name"]: strategy(f["ty"], models, depth + 1) if f["required"]
                                          else st.just(f["default"]) for f in spec["fields"]})
    if spec["kind"] == "model":
        models[spec.get("id", spec["name"])] = spec
        return st.fixed_dictionaries({f["name"]: strategy(f["ty"], models, depth + 1) for f in spec["fields"]})
    raise AssertionError(f"no strategy for {kind}")


SIGNATURES = [signature_ir(Everything), signatures_of(f"{signatures.__name__}:QA")[0], signature_ir(Awkward)]
TYPES = [f"{sig['name']}{suffix}" for sig in SIGNATURES for suffix in ("Input", "Output")]
USER_MODELS = {"Entity": signatures.Entity, "Tree": signatures.Tree, "Node": signatures.Node}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed")
    project = tmp_path_factory.mktemp("roundtrip")
    (project / "src").mkdir()
    (project / "Cargo.toml").write_text(
        '[package]\nname = "roundtrip"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n'
        'serde = { version = "1", features = ["derive"] }\n'
        'serde_json = { version = "1", features = ["float_roundtrip"] }\n\n[workspace]\n'
    )
    (project / "src" / "generated.rs").write_text(rust_source(SIGNATURES))
    arms = "\n".join(
        f'            "{name}" => serde_json::from_str::<{name}>(json).and_then(|v| serde_json::to_string(&v)),'
        for name in [*TYPES, *USER_MODELS]
    )
    (project / "src" / "main.rs").write_text(f"""
mod generated;
use generated::*;
use std::io::{{BufRead, Write}};

fn main() {{
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {{
        let line = line.unwrap();
        let (kind, json) = line.split_once('\\t').expect("TYPE<TAB>JSON");
        let result = match kind {{
{arms}
            other => panic!("unknown type {{other}}"),
        }};
        match result {{
            Ok(text) => writeln!(out, "{{text}}").unwrap(),
            Err(err) => writeln!(out, "ERROR {{err}}").unwrap(),
        }}
    }}
}}
""")
    target = Path(__file__).resolve().parents[2] / "crates" / "target" / "types-roundtrip"
    env = {**os.environ, "CARGO_TARGET_DIR": str(target)}
    build = subprocess.run(["cargo", "build", "--quiet", "--manifest-path", str(project / "Cargo.toml")],
                           capture_output=True, text=True, env=env)
    assert build.returncode == 0, f"the generated Rust does not compile:\n{build.stderr}"
    return target / "debug" / "roundtrip"


def rust_round_trip(binary: Path, lines: list[tuple[str, str]]) -> list[str]:
    stdin = "".join(f"{kind}\t{text}\n" for kind, text in lines)
    out = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]  # not splitlines(): JSON strings may hold U+2028 and friends


MODELS = load_pydantic(SIGNATURES)
VALUES = st.tuples(*(strategy({"kind": "model", "name": name, "doc": None,
                               "fields": [{**f, "required": True} for f in sig[role]]})
                     for sig in SIGNATURES for role in ("inputs", "outputs")
                     for name in [f"{sig['name']}{role}"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=VALUES)
def test_generated_rust_round_trips_every_type(harness: Path, values: tuple[dict[str, Any], ...]) -> None:
    originals = [MODELS[name].model_validate(value) for name, value in zip(TYPES, values, strict=True)]
    back = rust_round_trip(harness, [(name, to_rust_json(model)) for name, model in zip(TYPES, originals,
                                                                                          strict=True)])
    for name, original, text in zip(TYPES, originals, back, strict=True):
        assert not text.startswith("ERROR"), f"{name}: Rust could not read {to_rust_json(original)}: {text}"
        assert from_rust_json(MODELS[name], text) == original, name


USER_VALUES = st.tuples(*(strategy(type_ir(model, field=name)) for name, model in USER_MODELS.items()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=USER_VALUES)
def test_the_users_own_models_round_trip(harness: Path, values: tuple[dict[str, Any], ...]) -> None:
    """Through the user's classes (not the generated ones): defaults and None must survive as they are."""
    originals = [model.model_validate(v) for model, v in zip(USER_MODELS.values(), values, strict=True)]
    back = rust_round_trip(harness, [(name, to_rust_json(m)) for name, m in zip(USER_MODELS, originals,
                                                                                  strict=True)])
    for model, original, text in zip(USER_MODELS.values(), originals, back, strict=True):
        assert not text.startswith("ERROR"), text
        assert from_rust_json(model, text) == original


def test_none_survives_where_the_default_is_not_none(harness: Path) -> None:
    output = MODELS["AwkwardOutput"]
    value = output.model_validate({"datetime": "x", "limit": None,
                                   "models": [{"name": "a", "type": "org", "salience": 1.0}, "red"]})
    (text,) = rust_round_trip(harness, [("AwkwardOutput", to_rust_json(value))])
    assert from_rust_json(output, text).limit is None


def test_a_wrong_value_is_refused_by_the_rust_side(harness: Path) -> None:
    bad = '{"question": 42}'
    (out,) = rust_round_trip(harness, [("QAInput", bad)])
    assert out.startswith("ERROR") and "expected a string" in out
