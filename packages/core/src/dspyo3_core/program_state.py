"""Saved DSPy program state, loaded as data: learned state only, never connection settings or code.

A saved program (``program.save("x.json")``, a registry version, a checkpoint) is a file anyone with write access
can change. DSPy's ``load_state`` applies more than what optimizers learn: a predictor's ``"lm"`` entry becomes an
LM (model, ``api_base``, headers, ...), any other key is set as an attribute (``"config": {"api_base": ...}`` is
sent with every call, with your key), and a ``Flex`` module's ``"module_src"`` is code. So a state goes through
:func:`check_state` first, which lets through only an explicit allow-list of learned state:

* per predictor: ``demos`` (a list of objects), ``traces`` and ``train`` (lists), ``signature`` (``instructions``
  and, per field, ``prefix`` and ``description``), ``fields`` (DSPy's per-output decision settings), and ``lm``
  only when it is ``null``;
* per retriever: ``k`` (an integer);
* at the top level, DSPy's own ``metadata`` (dependency versions), which is not applied.

Anything else is refused with :class:`UnsafeStateError`, naming the key and the file. LMs are set in code or with
an LM profile, never by a saved program; :func:`learned_state` is what to save (it drops ``lm`` entries).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspyo3_core.files import loads_json

__all__ = ["PREDICTOR_KEYS", "UnsafeStateError", "apply_state", "check_state", "learned_state", "load_state_file"]

PREDICTOR_KEYS = frozenset({"demos", "traces", "train", "signature", "fields", "lm"})
"""The keys a predictor's saved state may have (``lm`` only as ``null``)."""
_SIGNATURE_KEYS = frozenset({"instructions", "fields"})
_SIGNATURE_FIELD_KEYS = frozenset({"prefix", "description"})
_RETRIEVER_KEYS = frozenset({"k"})
_TOP_LEVEL_IGNORED = frozenset({"metadata"})  # DSPy's save() adds dependency versions; never applied


class UnsafeStateError(ValueError):
    """A saved program state holds something that is not learned state (LM settings, attributes, code)."""


def _refuse(source: str, path: str, problem: str) -> UnsafeStateError:
    return UnsafeStateError(
        f"{source}: {path} {problem}; saved programs may hold learned state only (demos, instructions, field "
        "descriptions). Remove it from the file and set LMs in code or with an LM profile "
        "(dspyo3 lm list)")


def _check_predictor(state: Mapping[str, Any], where: str, source: str) -> None:
    for key, value in state.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in PREDICTOR_KEYS:
            raise _refuse(source, f"key {path!r}", "is not part of a predictor's learned state")
        if key == "lm":
            if value is not None:
                shown = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise _refuse(source, f"key {path!r}", f"carries LM settings ({shown})")
        elif key in ("traces", "train"):
            if not isinstance(value, list):
                raise _refuse(source, f"key {path!r}", "must be a list")
        elif key == "demos":
            if not isinstance(value, list) or not all(isinstance(d, Mapping) for d in value):
                raise _refuse(source, f"key {path!r}", "must be a list of objects")
        elif key == "fields":
            if not isinstance(value, Mapping):
                raise _refuse(source, f"key {path!r}", "must be an object")
        elif key == "signature":
            _check_signature(value, path, source)


def _check_signature(value: Any, path: str, source: str) -> None:
    if not isinstance(value, Mapping):
        raise _refuse(source, f"key {path!r}", "must be an object")
    for key in value:
        if key not in _SIGNATURE_KEYS:
            raise _refuse(source, f"key '{path}.{key}'", "is not part of a signature's learned state")
    if "instructions" in value and not isinstance(value["instructions"], str):
        raise _refuse(source, f"key '{path}.instructions'", "must be a string")
    fields = value.get("fields", [])
    if not isinstance(fields, list):
        raise _refuse(source, f"key '{path}.fields'", "must be a list")
    for i, field in enumerate(fields):
        if not isinstance(field, Mapping):
            raise _refuse(source, f"key '{path}.fields[{i}]'", "must be an object")
        for key, item in field.items():
            if key not in _SIGNATURE_FIELD_KEYS:
                raise _refuse(source, f"key '{path}.fields[{i}].{key}'", "is not a field's prefix or description")
            if not isinstance(item, str):
                raise _refuse(source, f"key '{path}.fields[{i}].{key}'", "must be a string")


def _is_predictor_state(state: Mapping[str, Any]) -> bool:
    return "signature" in state or "demos" in state


def _check_entry(name: str, entry: Any, source: str) -> None:
    if not isinstance(entry, Mapping):
        raise _refuse(source, f"entry {name!r}", f"is a {type(entry).__name__}, not a predictor's state")
    if _is_predictor_state(entry):
        _check_predictor(entry, name, source)
        return
    for key, value in entry.items():
        if key not in _RETRIEVER_KEYS:
            raise _refuse(source, f"key '{name}.{key}'", "is not part of a predictor's or retriever's learned state")
        if not isinstance(value, int) or isinstance(value, bool):
            raise _refuse(source, f"key '{name}.{key}'", "must be an integer")


def check_state(state: Any, *, source: str, program: Any = None) -> dict[str, Any]:
    """The state to hand to ``program.load_state``: ``state`` less DSPy's ``metadata``, after checking that it
    holds learned state only (see the module docstring).

    Args:
        state: a decoded saved state (``program.dump_state()`` / the JSON ``program.save()`` writes).
        source: where it came from (a file path, a registry version), named in errors.
        program: the module it will be loaded into, if known: a bare ``dspy.Predict`` has a flat state; entries
            the program has no parameter for are refused.

    Raises:
        UnsafeStateError: a key outside the allow-list, LM settings, code, or a malformed entry.
    """
    if not isinstance(state, Mapping):
        raise UnsafeStateError(f"{source}: a saved program state is a JSON object, not a {type(state).__name__}")
    body = {k: v for k, v in state.items() if k not in _TOP_LEVEL_IGNORED}
    flat = _is_predictor_state(body) if program is None else _is_flat_program(program)
    if flat:
        _check_predictor(body, "", source)
        return body
    known = _parameter_names(program) if program is not None else None
    for name, entry in body.items():
        if known is not None and name not in known:
            raise UnsafeStateError(
                f"{source}: entry {name!r} names no predictor of {type(program).__name__} (it has: "
                f"{', '.join(sorted(known)) or 'none'}); not a saved program of this class: save it with "
                "program.save(path) from the same class")
        _check_entry(str(name), entry, source)
    return body


def _is_flat_program(program: Any) -> bool:
    import dspy

    return isinstance(program, dspy.Predict)


def _parameter_names(program: Any) -> set[str] | None:
    named = getattr(program, "named_parameters", None)
    if named is None:
        return None
    return {name for name, _ in named()}


def learned_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``program.dump_state()`` may be saved and loaded back: the same, with every predictor's ``lm`` entry
    set to ``null`` (LMs are configured, not learned) and DSPy's ``metadata`` left out."""
    def clean(entry: Any) -> Any:
        if isinstance(entry, Mapping) and _is_predictor_state(entry) and entry.get("lm") is not None:
            return {**entry, "lm": None}
        return entry

    body = {k: v for k, v in state.items() if k not in _TOP_LEVEL_IGNORED}
    if _is_predictor_state(body):
        return dict(clean(body))
    return {k: clean(v) for k, v in body.items()}


def load_state_file(path: str | os.PathLike[str], *, program: Any = None) -> dict[str, Any]:
    """Read and check a program saved as JSON (``program.save("x.json")``); see :func:`check_state`.

    Raises:
        UnsafeStateError: the state holds more than learned state.
        ValueError: the file is not JSON (or is nested too deeply); pickles are refused (they can run code).
        OSError: the file cannot be read.
    """
    where = Path(path)
    if where.suffix != ".json":
        raise ValueError(f"{where}: dspyo3 loads programs saved as JSON (program.save('x.json')); pickles can run "
                         "arbitrary code and are refused")
    data = where.read_bytes()
    try:
        state = loads_json(data, source=str(where))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a saved program (not UTF-8 JSON); save programs with "
                         "program.save('x.json')") from None
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); save programs with program.save('x.json')") from None
    return check_state(state, source=str(where), program=program)


def apply_state(program: Any, state: Any, *, source: str) -> Any:
    """Check ``state`` (:func:`check_state`) and load it into ``program``; returns ``program``."""
    checked = check_state(state, source=source, program=program)
    program.load_state(checked)
    return program
