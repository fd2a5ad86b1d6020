"""Safe prediction parsing: raw LM output (ChatAdapter sections, JSON or XML) into a signature's typed fields.

Every problem is an :class:`OutputParseError` (a ``dspy.utils.exceptions.AdapterParseError``, so DSPy's own
fallbacks and retries still apply) that names the field, the expected type and the value received, and keeps the
raw text. :func:`parse_partial` reads the fields available so far from a truncated JSON answer while it streams.
:class:`StrictChatAdapter` and :class:`StrictJSONAdapter` put the parser under DSPy::

    dspy.configure(lm=lm, adapter=StrictChatAdapter())
"""

from __future__ import annotations

import enum
import html.entities
import json
import re
import types
import typing
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

import dspy
import pydantic
import pydantic_core
from dspy.utils.exceptions import AdapterParseError

from dspyo3_native import HTMLUnescaper
from dspyo3_types.adapters import NativeChatAdapter, NativeJSONAdapter

__all__ = ["OutputParseError", "StrictChatAdapter", "StrictJSONAdapter", "parse_output", "parse_partial"]

# A header is a line ``[[ ## name ## ]]`` (leading spaces allowed); matched on "\n" + text with the newline in the
# pattern, not with ``^`` and re.M: Python's regex engine tries ``^`` at every character, but jumps from newline to
# newline. ``[^\S\n]*``, not ``\s*``, so a run of blank lines is not rescanned from each line start (quadratic).
_SECTION = re.compile(r"\n[^\S\n]*\[\[ ## (\w+) ## \]\][ \t]*")
_FENCE_HEAD = re.compile(r"```[\w+-]*[ \t]*\n?")
_LITERAL_WRAPPER = re.compile(r"^Literal\[(.*)\]$", re.S)


class OutputParseError(AdapterParseError):
    """The LM's answer does not fit the signature.

    Attributes:
        field: the output field at fault (``None`` when the answer as a whole is unreadable).
        expected: the field's type as written in the signature.
        received: the text found for the field (``None`` when it is missing).
        raw: the whole LM answer.
    """

    def __init__(self, signature: type[dspy.Signature], raw: str, message: str, *, adapter: str,
                 field: str | None = None, expected: str | None = None, received: Any = None,
                 parsed: dict[str, Any] | None = None) -> None:
        self.field = field
        self.expected = expected
        self.received = received
        self.raw = raw
        super().__init__(adapter_name=adapter, signature=signature, lm_response=raw, message=message,
                         parsed_result=parsed or None)


@lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def _render(annotation: Any) -> str:
    from dspyo3_core.inspector import render_type

    return render_type(annotation)


def _is_textual(annotation: Any) -> bool:
    """str, a Literal of strings, a str Enum (or Optional of those): the raw text is the value."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return True
    if origin is Literal:
        return all(isinstance(v, str) for v in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return all(isinstance(m.value, str) for m in annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_textual(members[0])
    return False


def _optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in typing.get_args(annotation)


def _allows_none(annotation: Any) -> bool:
    """Whether the annotation admits ``None`` (``X | None``, ``Optional[X]``, ``Annotated[X | None, ...]``, ``None``):
    such an output field missing from the answer is ``None``, as in DSPy."""
    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _allows_none(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_allows_none(arg) for arg in typing.get_args(annotation))
    return False


def _enum_of(annotation: Any) -> type[enum.Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    if _optional(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _enum_of(members[0]) if len(members) == 1 else None
    return None


def _unquote(text: str) -> str:
    """``"x"`` / ``'x'`` / ``Literal['x']`` -> ``x`` (how LMs often write a Literal or Enum value)."""
    wrapped = _LITERAL_WRAPPER.match(text)
    if wrapped:
        text = wrapped.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _unfence(stripped: str) -> str | None:
    """The inside of a stripped text that is one code fence (```` ```lang ... ``` ````), else ``None``.

    ``find``-style checks rather than a lazy regex to the closing fence, which tried the end of the fence at every
    character and made answers full of backticks slow.
    """
    if len(stripped) < 6 or not stripped.startswith("```") or not stripped.endswith("```"):
        return None
    head = _FENCE_HEAD.match(stripped)
    assert head is not None  # it matches whenever the text starts with ```
    return stripped[head.end():len(stripped) - 3]


def _convert(name: str, text: Any, annotation: Any, signature: type[dspy.Signature], raw: str,
             adapter: str) -> Any:
    """One field's value (text from a section, or a JSON value) as the annotation's type."""
    if annotation is str:
        return text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    value = text
    if isinstance(text, str):
        stripped = text.strip()
        if _optional(annotation) and stripped in ("", "null", "None"):
            value = None
        elif _is_textual(annotation):
            value = _unquote(stripped)
            members = _enum_of(annotation)
            if members is not None and value not in {m.value for m in members} and value in members.__members__:
                value = members[value].value  # the member's name instead of its value
        else:
            fenced = _unfence(stripped)
            stripped = fenced.strip() if fenced is not None else stripped
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                value = stripped  # pydantic's lax mode still reads '3', 'true', ISO dates
    try:
        return _adapter(annotation).validate_python(value)
    except pydantic.ValidationError as exc:
        members = _enum_of(annotation)
        if members is not None and isinstance(value, str) and value in members.__members__:
            return members[value]
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        detail = first["msg"] + (f" (at {where})" if where else "")
        shown = text if isinstance(text, str) else json.dumps(text, default=str)
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        raise OutputParseError(
            signature, raw, f"field `{name}`: expected {_render(annotation)}, got {shown!r}: {detail}",
            adapter=adapter, field=name, expected=_render(annotation), received=text,
        ) from None


def _finish(fields: dict[str, Any], found: dict[str, Any], signature: type[dspy.Signature], raw: str,
            adapter: str) -> dict[str, Any]:
    """Convert every output field. A missing one takes its declared default, else ``None`` if its type admits
    ``None`` (as DSPy's adapters do), else fails."""
    out: dict[str, Any] = {}
    for name, info in signature.output_fields.items():
        if name in found:
            try:
                out[name] = _convert(name, found[name], info.annotation, signature, raw, adapter)
            except RecursionError:  # json.loads / json.dumps / validation of a value nested deeper than Python goes
                raise OutputParseError(
                    signature, raw, f"field `{name}`: expected {_render(info.annotation)}, got a value nested too "
                    "deeply to read", adapter=adapter, field=name, expected=_render(info.annotation),
                    received=found[name],
                ) from None
        elif not info.is_required():
            out[name] = info.get_default(call_default_factory=True)
        elif _allows_none(info.annotation):
            out[name] = None
        else:
            missing = [n for n, f in signature.output_fields.items()
                       if n not in found and f.is_required() and not _allows_none(f.annotation)]
            raise OutputParseError(
                signature, raw,
                f"field `{name}` (expected {_render(info.annotation)}) is missing from the LM answer; "
                f"missing: {', '.join(missing)}; found: {', '.join(found) or 'nothing'}",
                adapter=adapter, field=name, expected=_render(info.annotation), parsed=out or None,
            )
    return out


def _chat_sections(text: str, signature: type[dspy.Signature]) -> dict[str, str]:
    """The output fields' ``[[ ## name ## ]]`` sections (the first occurrence of each name wins, as in DSPy).

    One ``re.split`` and C-level dict building: linear time, without a Python step per header.
    """
    parts = _SECTION.split("\n" + text)  # [before, name, content, name, content, ...]
    first = dict(zip(reversed(parts[1::2]), reversed(parts[2::2]), strict=True))  # the first occurrence wins
    return {name: first[name].strip() for name in signature.output_fields if name in first and name != "completed"}


def _json_object(text: str, signature: type[dspy.Signature], adapter: str) -> dict[str, Any]:
    stripped = text.strip()
    fenced = _unfence(stripped)
    if fenced is not None:
        stripped = fenced.strip()
    start = stripped.find("{")
    if start == -1:
        raise OutputParseError(signature, text, "the LM answer holds no JSON object", adapter=adapter)
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped, start)  # prose after the object is ignored
    except json.JSONDecodeError as exc:
        raise OutputParseError(signature, text, f"the LM answer is not valid JSON: {exc}", adapter=adapter) from None
    except RecursionError:
        raise OutputParseError(signature, text, "the LM answer's JSON is nested too deeply to read",
                               adapter=adapter) from None
    if not isinstance(value, dict):
        raise OutputParseError(signature, text, "the LM answer's JSON is not an object", adapter=adapter)
    return value


@lru_cache(maxsize=1024)
def _xml_open(name: str) -> re.Pattern[str]:
    return re.compile(rf"<{re.escape(name)}[\s>]")


# html.unescape's rules (numeric references, HTML5's named references with and without ";") in one native pass,
# linear in the text whatever it holds; the table of names is Python's own, given once.
_UNESCAPER = HTMLUnescaper(html.entities.html5)


def _unescape(text: str) -> str:
    """``html.unescape`` (numeric and named character references), decoded natively in one linear pass.

    A number is read as out of range from its length: a reference of thousands of digits costs no big-number
    conversion (``html.unescape`` raises ``ValueError`` past 4300 decimal digits) and decodes to U+FFFD like any
    number out of range.
    """
    return _UNESCAPER.unescape(text)


def _xml_fields(text: str, signature: type[dspy.Signature]) -> dict[str, str]:
    """``<name attr="...">value</name>`` for each output field: the first opening tag and the first closing tag
    after it (entities unescaped).

    Linear time, with a few ``find`` calls per field instead of a lazy regex: a regex that looks for the closing
    tag after each opening tag rescans the rest of the text from every unclosed one. Only the first opening tag
    can match: if it has no ``>`` or no closing tag after it, no later one has either.
    """
    found: dict[str, str] = {}
    for name in signature.output_fields:
        opening = _xml_open(name).search(text)
        if opening is None:
            continue
        content_at = text.find(">", opening.end() - 1) + 1
        if content_at == 0:
            continue
        end = text.find(f"</{name}>", content_at)
        if end != -1:
            found[name] = _unescape(text[content_at:end].strip())
    return found


def parse_output(text: str, signature: type[dspy.Signature], fmt: str = "auto") -> dict[str, Any]:
    """Parse an LM answer into the signature's output fields, converted to their types.

    ``fmt``: ``"chat"`` (``[[ ## field ## ]]`` sections), ``"json"``, ``"xml"`` or ``"auto"`` (sections if the
    text has any, else JSON if it starts with an object or a code fence, else XML if it has an output field's
    tag, else JSON).
    """
    if fmt == "auto":
        head = text.lstrip()
        if _SECTION.search("\n" + text):
            fmt = "chat"
        elif head.startswith(("{", "```")):
            fmt = "json"
        elif any(_xml_open(name).search(text) for name in signature.output_fields):
            fmt = "xml"
        else:
            fmt = "json"
    adapter = {"chat": "StrictChatAdapter", "json": "StrictJSONAdapter", "xml": "StrictXMLParser"}.get(fmt)
    if adapter is None:
        raise ValueError(f"unknown format {fmt!r}; use chat, json, xml or auto")
    if fmt == "chat":
        found: dict[str, Any] = _chat_sections(text, signature)
    elif fmt == "json":
        found = _json_object(text, signature, adapter)
    else:
        found = _xml_fields(text, signature)
    return _finish(dict(signature.output_fields), found, signature, text, adapter)


def _json_tokens(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """Structure of (possibly truncated) JSON: ``(position, char)`` for each bracket, comma and colon outside
    strings, and ``(string start, '"')`` once a string has closed (an unfinished trailing string yields nothing)."""
    in_string, escaped, string_start = False, False, 0
    for j in range(start, len(text)):
        c = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                yield string_start, '"'
        elif c == '"':
            in_string, string_start = True, j
        elif c in "[]{},:":
            yield j, c


def _value_complete(text: str, start: int) -> bool:
    """Whether the JSON value starting at ``start`` ends before the text does."""
    depth = 0
    for _, c in _json_tokens(text, start):
        if c == '"' and depth == 0:
            return True
        if c in "[{":
            depth += 1
        elif c in "]}":
            if depth == 0:
                return True  # the enclosing object closed: the value ended before
            depth -= 1
            if depth == 0:
                return True
        elif c == "," and depth == 0:
            return True
    return False  # a scalar at the very end may still grow ("12" -> "123")


def _last_top_level_value(body: str) -> tuple[str | None, int | None]:
    """The last key of the outermost object and where its value starts (``None`` before any value)."""
    depth = 0
    last_string: str | None = None
    key: str | None = None
    value_at: int | None = None
    for j, c in _json_tokens(body):
        if c == '"':
            if depth == 1:
                try:
                    last_string, _ = json.JSONDecoder().raw_decode(body, j)
                except json.JSONDecodeError:
                    last_string = None
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == ":" and depth == 1 and last_string is not None:
            key, value_at, last_string = last_string, j + 1, None
        elif c == "," and depth == 1:
            last_string = None
    if value_at is not None:
        while value_at < len(body) and body[value_at] in " \t\r\n":
            value_at += 1
    return key, value_at


def parse_partial(text: str, signature: type[dspy.Signature]) -> dict[str, Any]:
    """The output fields readable so far from a JSON answer that is still streaming.

    Complete values are converted to their types; a ``str`` field still being written is returned as far as it
    goes; any other incomplete value (half a number, an open list or object) is left out. Never raises for
    truncation; returns ``{}`` while no field is readable.
    """
    start = text.find("{")
    if start == -1:
        return {}
    body = text[start:]
    try:
        partial = pydantic_core.from_json(body, allow_partial="trailing-strings")
    except ValueError:
        return {}
    if not isinstance(partial, dict) or not partial:
        return {}
    last, value_at = _last_top_level_value(body)
    last_complete = value_at is not None and _value_complete(body, value_at)
    out: dict[str, Any] = {}
    fields = signature.output_fields
    for name, value in partial.items():
        if name not in fields:
            continue
        annotation = fields[name].annotation
        if name == last and not last_complete:
            if isinstance(value, str) and annotation is str:
                out[name] = value  # the text so far
            continue
        try:
            out[name] = _adapter(annotation).validate_python(value)
        except (pydantic.ValidationError, RecursionError):
            continue
    return out


class StrictChatAdapter(NativeChatAdapter):
    """``dspy.ChatAdapter`` whose answers are parsed by :func:`parse_output`: errors name the field, the expected
    type and the value, and the raw answer is kept. Prompts are DSPy's own, written by
    :class:`~dspyo3_types.adapters.NativeChatAdapter` (byte-identical, in Rust); when parsing fails, the
    JSON fallback DSPy makes is :class:`StrictJSONAdapter`, so the strictness holds there too.

    DSPy's ``StreamListener`` accepts only its own adapter classes by name: stream through
    :class:`dspyo3_types.adapters.StreamListener`, or read streamed JSON with :func:`parse_partial`.
    """

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return parse_output(completion, signature, "chat")

    def _make_json_adapter_fallback(self) -> StrictJSONAdapter:
        return StrictJSONAdapter(use_native_function_calling=self.use_native_function_calling,
                                 parallel_tool_calls=self.parallel_tool_calls)


class StrictJSONAdapter(NativeJSONAdapter):
    """``dspy.JSONAdapter`` with :func:`parse_output`'s JSON parsing (prompts written by
    :class:`~dspyo3_types.adapters.NativeJSONAdapter`)."""

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return parse_output(completion, signature, "json")
