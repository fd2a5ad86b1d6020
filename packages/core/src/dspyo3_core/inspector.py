"""``dspyo3 inspect``: what a DSPy program is made of, as data.

TARGET is either ``package.module:attribute`` (a ``dspy.Module`` instance or class, or a ``dspy.Signature``)
or the path of a program saved with ``program.save("x.json")``. The result is::

    {"target": ..., "predictors": [{"name", "signature": {"instructions", "inputs": [{"name", "type", "desc", "ty"}],
                                    "outputs": [...]}, "demos": <count>}]}

``ty`` is the field's type in the signature IR (:mod:`dspyo3_core.ir`, the JSON that code generation and the Rust
crate read); ``null`` with a ``ty_error`` when the IR cannot express the type.

Types are written as Python annotations: ``str``, ``list[str]``, ``Optional[int]``, ``Literal['a', 'b']``, or a
Pydantic model's class name. A saved ``.json`` stores no field types and no input/output split; give
``program=`` (``--program package.module:Class``) to load the state into its class and report everything.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import dspy

from dspyo3_core.ir import render_type as render_type  # where it has always been importable from


class InspectError(ValueError):
    """TARGET cannot be resolved or is not a DSPy program; the message says why and what to pass."""


def _description(name: str, desc: Any) -> str:
    text = str(desc or "")
    return "" if text == f"${{{name}}}" else text  # DSPy's placeholder when no description was given


def _field(name: str, info: Any) -> dict[str, Any]:
    from dspyo3_core.ir import UnsupportedTypeError, type_ir

    extra = info.json_schema_extra or {}
    entry: dict[str, Any] = {"name": name, "type": render_type(info.annotation),
                             "desc": _description(name, extra.get("desc"))}
    try:
        entry["ty"] = type_ir(info.annotation, field=name)  # the signature IR (dspyo3_core.ir)
    except UnsupportedTypeError as exc:
        entry["ty"] = None
        entry["ty_error"] = str(exc)
    return entry


def describe_signature(signature: type[dspy.Signature]) -> dict[str, Any]:
    """``{"instructions", "inputs", "outputs"}`` for a signature class."""
    return {
        "instructions": signature.instructions,
        "inputs": [_field(name, info) for name, info in signature.input_fields.items()],
        "outputs": [_field(name, info) for name, info in signature.output_fields.items()],
    }


def describe_module(module: dspy.Module) -> list[dict[str, Any]]:
    """One entry per named predictor of ``module``."""
    return [
        {"name": name, "signature": describe_signature(predictor.signature), "demos": len(predictor.demos or [])}
        for name, predictor in module.named_predictors()
    ]


def resolve(target: str) -> Any:
    """Import ``package.module:attribute`` (attribute may be dotted); the current directory is importable."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise InspectError(f"TARGET {target!r} must be package.module:attribute or a saved program .json file")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InspectError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise InspectError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InspectError(f"{module_name!r} has no attribute {attribute!r}") from None
    return obj


def as_module(obj: Any, target: str) -> dspy.Module:
    """``obj`` as a ``dspy.Module``: an instance as is, a class constructed without arguments.

    Raises:
        InspectError: ``obj`` is neither, or its class cannot be constructed without arguments (``target`` names
            it in the message).
    """
    if isinstance(obj, dspy.Module):
        return obj
    if isinstance(obj, type) and issubclass(obj, dspy.Module):
        try:
            return obj()
        except TypeError as exc:
            raise InspectError(
                f"{target} is a class whose constructor needs arguments ({exc}); point TARGET at an instance"
            ) from None
        except Exception as exc:
            raise InspectError(f"constructing {target} raised {type(exc).__name__}: {exc}") from None
    raise InspectError(f"{target} is a {type(obj).__name__}, not a dspy.Module (instance or class) or Signature")


def _name_from_prefix(prefix: str) -> str:
    return prefix.rstrip(":").strip().lower().replace(" ", "_")


def describe_saved(path: Path) -> list[dict[str, Any]]:
    """Best effort from a saved ``.json`` alone: names from field prefixes, no types, no input/output split."""
    from dspyo3_core.files import loads_json

    try:
        state = loads_json(path.read_bytes(), source=str(path))
    except UnicodeDecodeError:
        raise InspectError(f"{path} is not a saved program (not UTF-8 JSON); save programs with "
                           "program.save('x.json')") from None
    except ValueError as exc:
        raise InspectError(f"{path} is not valid JSON ({exc}); save programs with program.save('x.json')") from None
    if not isinstance(state, dict):
        raise InspectError(f"{path} does not hold a saved DSPy program (expected a JSON object)")
    predictors = []
    for name, entry in state.items():
        if not isinstance(entry, dict) or "signature" not in entry:
            continue
        signature = entry["signature"]
        raw_fields = signature.get("fields") if isinstance(signature, dict) else None
        if not isinstance(raw_fields, list) or not all(isinstance(f, dict) for f in raw_fields):
            raise InspectError(f"{path}: predictor {name!r} has a malformed signature; re-save the program")
        fields = []
        for f in raw_fields:
            field_name = _name_from_prefix(str(f.get("prefix", "")))
            fields.append({"name": field_name, "type": "unknown",
                           "desc": _description(field_name, f.get("description"))})
        predictors.append({
            "name": name,
            "signature": {"instructions": signature.get("instructions", ""), "inputs": [], "outputs": [],
                          "fields": fields},
            "demos": len(entry.get("demos") or []),
        })
    if not predictors:
        raise InspectError(f"{path} has no predictor state; is it a file written by program.save('x.json')?")
    return predictors


def inspect_target(target: str, program: str | None = None) -> dict[str, Any]:
    """Describe TARGET (see module docstring). ``program`` loads a saved ``.json`` into that class first."""
    path = Path(target)
    if target.endswith(".json"):
        if not path.is_file():
            raise InspectError(f"{target} does not exist")
        if program is None:
            return {"target": target, "predictors": describe_saved(path),
                    "note": "a saved .json has no field types or roles; pass --program MODULE:CLASS for them"}
        from dspyo3_core.program_state import UnsafeStateError, load_state_file

        module = as_module(resolve(program), program)
        try:
            module.load_state(load_state_file(path, program=module))
        except (UnsafeStateError, OSError) as exc:
            raise InspectError(str(exc)) from None
        except Exception as exc:
            raise InspectError(f"{program} cannot load {target}: {type(exc).__name__}: {exc}") from None
        return {"target": target, "program": program, "predictors": describe_module(module)}
    obj = resolve(target)
    if isinstance(obj, type) and issubclass(obj, dspy.Signature):
        return {"target": target, "predictors": [{"name": obj.__name__, "signature": describe_signature(obj),
                                                  "demos": 0}]}
    return {"target": target, "predictors": describe_module(as_module(obj, target))}
