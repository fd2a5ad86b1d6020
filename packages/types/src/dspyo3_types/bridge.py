"""``pydantic_bridge``: Pydantic models for a signature, and the JSON the Rust side (generated serde types or the
``dspyo3`` crate) reads and writes."""

from __future__ import annotations

from typing import Any

import pydantic

from dspyo3_core.ir import signature_ir
from dspyo3_types.codegen import load_pydantic, pascal_case

__all__ = ["from_rust_json", "models_for", "to_rust_json"]


def models_for(signature: Any) -> tuple[type[pydantic.BaseModel], type[pydantic.BaseModel]]:
    """``(XInput, XOutput)``: Pydantic models of a ``dspy.Signature``, the same as ``--lang pydantic`` writes."""
    ir = signature_ir(signature)
    namespace = load_pydantic([ir])
    name = pascal_case(ir["name"])
    return namespace[f"{name}Input"], namespace[f"{name}Output"]


def to_rust_json(value: pydantic.BaseModel) -> str:
    """JSON for the Rust side: every field, ``None`` as ``null`` (which generated code reads as ``None``), so a
    ``None`` survives even where the Python default is something else."""
    return value.model_dump_json()


def from_rust_json(model: type[pydantic.BaseModel], text: str | bytes) -> pydantic.BaseModel:
    """Read JSON the Rust side wrote back into ``model`` (validated)."""
    return model.model_validate_json(text)
