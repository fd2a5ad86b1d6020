"""The tools dspyo3-agents contributes through ``dspyo3_register_tools``.

``calculator`` and ``current_time`` are pure and enabled. ``read_file`` (tag ``files``) and ``http_get`` (tag
``network``) start disabled: enable them by name (``DSPYO3_AGENTS_ENABLE_TOOLS=read_file``,
``registry.enable("http_get")``, ``dspyo3 agents run --enable read_file``).
"""

from __future__ import annotations

import ast
import datetime as _dt
import math
import operator
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dspyo3_agents.tools import tool_options

__all__ = ["BUILTIN_TOOLS", "calculator", "current_time", "http_get", "read_file"]

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log, "exp": math.exp,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION = 500


MAX_BITS = 10_000
"""The largest integer (in bits) the calculator computes, checked *before* each power or product: a short
expression such as ``(((9**99)**99)**99)**9`` would otherwise burn seconds of CPU (under the GIL)."""


def _bits(value: Any) -> float:
    return float(abs(value).bit_length()) if isinstance(value, int) else 0.0


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse a power or product whose exact (integer) result would exceed :data:`MAX_BITS`; floats overflow to
    an error or ``inf`` quickly by themselves."""
    if isinstance(op, ast.Pow):
        if isinstance(right, (int, float)) and abs(right) > 10_000:
            raise ValueError("exponents above 10000 are not allowed")
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            estimate = right * math.log2(abs(left))
            if estimate > MAX_BITS:
                raise ValueError(f"the result would have about {estimate:.0f} bits (the limit is {MAX_BITS}); "
                                 "use smaller numbers or floats (e.g. 9.0 ** 99)")
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > MAX_BITS:
        raise ValueError(f"the product would have about {_bits(left) + _bits(right):.0f} bits (the limit is "
                         f"{MAX_BITS}); use smaller numbers or floats")


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        if _bits(node.value) > MAX_BITS:
            raise ValueError(f"numbers above {MAX_BITS} bits are not allowed")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        _check_size(node.op, left, right)
        try:
            return _BINARY[type(node.op)](left, right)
        except OverflowError:
            raise ValueError("the result is too large for a float") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args))
    raise ValueError(f"unsupported expression element {ast.dump(node)[:60]}; use numbers, + - * / // % **, "
                     f"parentheses, {', '.join(_CONSTANTS)} and {', '.join(_FUNCTIONS)}()")


@tool_options(tags=["math"])
def calculator(expression: str) -> float | int:
    """Evaluate an arithmetic expression exactly as written (no variables, no code).

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "(3 + 4) * 12.5"; also sqrt, abs, round,
            min, max, log, exp, pi, e.
    """
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    result = _evaluate(tree)
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result  # type: ignore[no-any-return]


@tool_options(tags=["time"])
def current_time(timezone: str = "UTC") -> str:
    """The current date and time, ISO 8601.

    Args:
        timezone: an IANA time zone name such as "UTC" or "Europe/Paris".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as 'UTC' or 'Europe/Paris'") from None
    return _dt.datetime.now(zone).isoformat(timespec="seconds")


@tool_options(tags=["files"], timeout=10)
def read_file(path: str, max_bytes: int = 65536) -> str:
    """Read a UTF-8 text file under the working directory (or $DSPYO3_AGENTS_FILES_ROOT).

    Args:
        path: a path relative to that directory; paths leaving it are refused.
        max_bytes: read at most this many bytes.
    """
    root = Path(os.environ.get("DSPYO3_AGENTS_FILES_ROOT") or Path.cwd()).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise PermissionError(f"{path!r} is outside {root}; only files under it can be read")
    with open(target, "rb") as handle:
        return handle.read(max(0, max_bytes)).decode("utf-8", errors="replace")


def _http_only(url: str) -> None:
    if urllib.parse.urlsplit(url).scheme.lower() not in {"http", "https"}:
        raise ValueError(f"only http:// and https:// URLs can be fetched, not {url!r}")


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but only to http(s) URLs."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        _http_only(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@tool_options(tags=["network"], timeout=15, max_concurrency=4)
def http_get(url: str, max_bytes: int = 65536) -> str:
    """Fetch a URL with HTTP GET and return the body as text.

    Disabled by default (tag ``network``). It follows redirects (to http/https URLs only; other schemes are
    refused, also after a redirect) and has NO guard against private, loopback or link-local addresses: an agent
    that has it can reach whatever this machine can (cloud metadata endpoints, internal services). Enable it only
    where that is acceptable, or register your own fetcher with an allow-list.

    Args:
        url: an http:// or https:// URL.
        max_bytes: return at most this many bytes of the body.
    """
    _http_only(url)
    opener = urllib.request.build_opener(_HTTPOnlyRedirects())
    with opener.open(url, timeout=10) as response:
        _http_only(response.geturl())
        body: bytes = response.read(max(0, max_bytes))
    return body.decode("utf-8", errors="replace")


BUILTIN_TOOLS: tuple[Callable[..., Any], ...] = (calculator, current_time, read_file, http_get)
"""The functions the plugin registers (by their ``__name__``)."""
