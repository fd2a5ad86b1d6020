"""The signature IR: one JSON description of a DSPy signature's fields and types, shared by Python and Rust.

``signature_ir(Signature)`` gives::

    {"name": "QA", "instructions": "...",
     "inputs":  [{"name": "question", "desc": "...", "prefix": "Question:", "ty": TYPE}, ...],
     "outputs": [...]}

and a TYPE is one of these (the tags the ``dspyo3`` Rust crate's ``TypeSpec`` shares with it are spelled the
same; the IR has more kinds than the crate: ``datetime``/``date``/``time``, ``enum`` and ``ref``)::

    {"kind": "str" | "int" | "float" | "bool" | "any" | "datetime" | "date" | "time"}
    {"kind": "list", "item": TYPE}                  list[T], tuple[T, ...], Sequence[T]
    {"kind": "tuple", "items": [TYPE, ...]}         tuple[A, B]
    {"kind": "optional", "inner": TYPE}             Optional[T], T | None
    {"kind": "dict", "value": TYPE}                 dict[str, T]
    {"kind": "literal", "name": null, "values": [...]}
    {"kind": "enum", "name": "Color", "doc": ..., "members": [{"name": "RED", "value": "red"}, ...]}
    {"kind": "model", "name": "Entity", "id": "pkg.mod.Entity", "doc": ...,
     "fields": [{"name", "desc", "ty": TYPE, "required", "default" (JSON, when not required)}]}
    {"kind": "ref", "name": "Tree", "id": "pkg.mod.Tree"}   a model inside itself (recursive models)

``dspyo3 inspect`` prints it (``ty``) next to the readable type string. Anything else raises
:class:`UnsupportedTypeError` naming the field and the type.
"""

from __future__ import annotations

import datetime as _dt
import enum
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

import pydantic
import pydantic_core

__all__ = ["UnsupportedTypeError", "render_type", "signature_ir", "type_ir"]


def render_type(annotation: Any) -> str:
    """Write an annotation the way a Python programmer would (``Optional[int]``, ``list[str]``, ...)."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Ellipsis:
        return "..."
    if isinstance(annotation, typing.ForwardRef):
        return annotation.__forward_arg__
    if isinstance(annotation, str):
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return render_type(args[0])
    if origin is Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in args if arg is not type(None)]
        inner = render_type(members[0]) if len(members) == 1 else "Union[" + ", ".join(map(render_type, members)) + "]"
        return f"Optional[{inner}]" if len(members) < len(args) else inner
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{', '.join(map(render_type, args))}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


class UnsupportedTypeError(TypeError):
    """An annotation the IR (and so code generation) cannot express; the message names the field and the type."""

    def __init__(self, field: str, annotation: Any, why: str) -> None:
        self.field = field
        self.annotation = annotation
        super().__init__(f"field `{field}`: type {render_type(annotation)} is not supported ({why})")


def _placeholder(name: str, desc: Any) -> str | None:
    text = str(desc or "")
    return None if not text or text == f"${{{name}}}" else text


def type_ir(annotation: Any, *, field: str = "?", _models: tuple[type, ...] = ()) -> dict[str, Any]:
    """The IR of one annotation; ``field`` names the field in error messages."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_ir(args[0], field=field, _models=_models)
    if annotation is Any or annotation is object:
        return {"kind": "any"}
    if annotation is bool:
        return {"kind": "bool"}
    if annotation is int:
        return {"kind": "int"}
    if annotation is float:
        return {"kind": "float"}
    if annotation is str:
        return {"kind": "str"}
    if annotation is _dt.datetime:
        return {"kind": "datetime"}
    if annotation is _dt.date:
        return {"kind": "date"}
    if annotation is _dt.time:
        return {"kind": "time"}
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1 and len(members) < len(args):
            return {"kind": "optional", "inner": type_ir(members[0], field=field, _models=_models)}
        raise UnsupportedTypeError(field, annotation, "unions of several types have no single serde shape; "
                                   "use one type, a Literal, or a model")
    if origin is Literal:
        if not all(isinstance(arg, (str, int, bool)) for arg in args):
            raise UnsupportedTypeError(field, annotation, "Literal values must be strings, ints or bools")
        return {"kind": "literal", "name": None, "values": list(args)}
    if origin in (list, Sequence, typing.List) or annotation in (list, typing.List):  # noqa: UP006
        item = args[0] if args else Any
        return {"kind": "list", "item": type_ir(item, field=field, _models=_models)}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"kind": "list", "item": type_ir(args[0], field=field, _models=_models)}
        if not args or args == ((),):
            raise UnsupportedTypeError(field, annotation, "give the tuple's element types")
        return {"kind": "tuple", "items": [type_ir(arg, field=field, _models=_models) for arg in args]}
    if origin is dict or annotation is dict:
        key, value = args if args else (str, Any)
        if key is not str:
            raise UnsupportedTypeError(field, annotation, "dict keys must be str (JSON object keys)")
        return {"kind": "dict", "value": type_ir(value, field=field, _models=_models)}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {
            "kind": "enum",
            "name": annotation.__name__,
            "doc": _class_doc(annotation, enum.Enum),
            "members": [{"name": member.name, "value": member.value} for member in annotation],
        }
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        model_id = f"{annotation.__module__}.{annotation.__qualname__}"
        if annotation in _models:
            return {"kind": "ref", "name": annotation.__name__, "id": model_id}
        fields = []
        for name, info in annotation.model_fields.items():
            entry = {
                "name": name,
                "desc": info.description,
                "ty": type_ir(info.annotation, field=f"{field}.{name}", _models=(*_models, annotation)),
                "required": info.is_required(),
            }
            if not info.is_required():
                default = info.get_default(call_default_factory=True)
                try:
                    entry["default"] = pydantic_core.to_jsonable_python(default)
                except pydantic_core.PydanticSerializationError:
                    raise UnsupportedTypeError(f"{field}.{name}", info.annotation,
                                               "its default value is not JSON-serializable") from None
            fields.append(entry)
        return {"kind": "model", "name": annotation.__name__, "id": model_id,
                "doc": _class_doc(annotation, pydantic.BaseModel), "fields": fields}
    raise UnsupportedTypeError(field, annotation, "supported: str, int, float, bool, Any, datetime/date/time, list, "
                               "tuple, dict[str, T], Optional, Literal, Enum and Pydantic models")


def _class_doc(cls: type, base: type) -> str | None:
    doc = cls.__doc__
    return None if not doc or doc == base.__doc__ else doc.strip()


def _field_ir(name: str, info: Any, signature: str) -> dict[str, Any]:
    extra = info.json_schema_extra or {}
    entry = {
        "name": name,
        "desc": _placeholder(name, extra.get("desc")),
        "prefix": extra.get("prefix"),
        "ty": type_ir(info.annotation, field=name),
    }
    if not info.is_required():
        try:
            entry["default"] = pydantic_core.to_jsonable_python(info.get_default(call_default_factory=True))
        except pydantic_core.PydanticSerializationError:
            raise UnsupportedTypeError(name, info.annotation, "its default value is not JSON-serializable") from None
    return entry


def signature_ir(signature: Any) -> dict[str, Any]:
    """The IR of a ``dspy.Signature`` class (class-based or built from a string)."""
    name = getattr(signature, "__name__", "Signature")
    return {
        "name": name,
        "instructions": signature.instructions,
        "inputs": [_field_ir(n, info, name) for n, info in signature.input_fields.items()],
        "outputs": [_field_ir(n, info, name) for n, info in signature.output_fields.items()],
    }
