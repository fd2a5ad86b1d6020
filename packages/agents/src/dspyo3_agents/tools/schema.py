"""A tool's JSON Schema and argument model from its signature, type hints and Google-style docstring."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

import pydantic

__all__ = ["arguments_model", "describe_type", "inline_refs", "parse_docstring"]

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_SECTION_HEADER = re.compile(r"^\s*(Returns?|Raises|Yields|Examples?|Notes?|Attributes)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (the docstring before its sections) and Google-style ``Args:`` descriptions."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section = "description"
    current: str | None = None
    indent = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            section, current, indent = "args", None, None
            continue
        if _SECTION_HEADER.match(line):
            section = "other"
            continue
        if section == "description":
            description.append(line)
        elif section == "args" and line.strip():
            line_indent = len(line) - len(line.lstrip())
            match = _ARG_LINE.match(line)
            if match and (indent is None or line_indent <= indent):
                indent = line_indent
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    text = "\n".join(description).strip()
    return text, args


def describe_type(schema: Mapping[str, Any]) -> str:
    """An argument's JSON Schema as a short type name for error messages (``integer``, ``string | null``, ...)."""
    if "type" in schema:
        return str(schema["type"])
    if "anyOf" in schema:
        return " | ".join(describe_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return "any"


def arguments_model(func: Callable[..., Any], name: str, arg_docs: Mapping[str, str]
               ) -> tuple[type[pydantic.BaseModel], bool]:
    """A Pydantic model of ``func``'s parameters (extra arguments forbidden unless it takes ``**kwargs``)."""
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else getattr(func, "__call__", func)  # noqa: B004
    signature = inspect.signature(target)
    try:
        hints = get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    var_kwargs = False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kwargs = True
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, pydantic.Field(default, description=arg_docs.get(param.name) or None))
    config = pydantic.ConfigDict(extra="allow" if var_kwargs else "forbid", arbitrary_types_allowed=True)
    safe = re.sub(r"\W", "_", name) or "tool"
    model = pydantic.create_model(f"{safe}_arguments", __config__=config, **fields)
    return model, var_kwargs


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``s into ``$defs`` (LMs read flat schemas better)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs.get(str(node["$ref"]).rsplit("/", 1)[-1])
                if target is not None:
                    return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    resolved: dict[str, Any] = walk(schema)
    return resolved
