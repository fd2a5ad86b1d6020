"""Safe serialization of cached LM responses: JSON for plain data, restricted pickle for known response models.

What DSPy caches is either plain data (the records of DSPy's native engine and of
:class:`~dspyo3_core.native_lm.NativeLM`) or a provider SDK response object (LiteLLM's ``ModelResponse`` on
DSPy's compatibility path). Plain data is stored as JSON. Objects are pickled, and read back with an unpickler
that only resolves classes from ``litellm.types.*`` / ``openai.types.*`` (DSPy's own trust rule for its
restricted disk cache) and the ``safe_types`` you list; anything else is refused, so a value planted in a shared
Redis cannot run code in the reader.

Each payload starts with a format tag and the cache key it was written under; a payload read back under a
different key, or one that does not decode, is treated as a miss (never served).

Size is bounded before anything is built, in bytes of the Python objects a payload decodes to: a payload over
``max_payload_bytes`` is refused unread; JSON is refused when an upper bound of its decoded size, counted from its
structural bytes at C speed (:func:`json_size_bound`), is over ``max_decoded_bytes``, and when it nests deeper than
``max_depth`` levels; a pickle is first walked opcode by opcode without running it (:func:`check_pickle`): only
the binary opcodes of protocols 4 and 5, a dense memo, and a value whose estimated size *with every shared
reference expanded* (what a copy, a JSON dump or a validator would build from it) stays under
``max_decoded_bytes``, together with the work its construction does (hashing keys, constructor arguments, a
``bytes(n)``-style size argument). Payloads are not compressed, so there is no decompression step to bound.

:func:`check_entry` then checks that the decoded value is what the caller reads for that request: a DSPy LM call
gets a DSPy result record or a response object with ``choices`` / ``output``, a ``NativeLM`` call its record, and
every answer in it has text or tool calls for DSPy's adapters to parse.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable
from typing import Any

import orjson

JSON_TAG = b"d3j1"
"""Format tag of a JSON payload (plain data)."""
_PICKLE = b"d3p1"
_TRUSTED_PREFIXES = ("litellm.types.", "openai.types.")
# plain containers and values a pickled response may hold; no callables (no getattr, eval, os.*, ...)
_BUILTINS = frozenset({
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "object"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"),
})

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Default cap on a stored payload (larger ones are neither written nor read)."""
MAX_DECODED_BYTES = 128 * 1024 * 1024
"""Default cap on the estimated size of a decoded value, shared references expanded."""
MAX_DEPTH = 100
"""Default cap on how deeply a decoded value nests."""


class UnsafeValueError(ValueError):
    """A cached payload names a class outside the allow-list (or is not a payload this cache wrote)."""


_STRICT = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def plain_json(value: Any) -> bytes | None:
    """``value`` as JSON if it is plain data that reads back equal (``dict`` with str keys, ``list``, ``str``,
    ``int``, ``float``, ``bool``, ``None``; no subclasses, tuples, dataclasses, dates, NaN), else None."""
    try:
        body = orjson.dumps(value, option=_STRICT)
    except TypeError:
        return None
    try:
        return body if orjson.loads(body) == value else None
    except Exception:  # a value whose __eq__ misbehaves is not plain
        return None


def is_plain(value: Any) -> bool:
    """True if :func:`plain_json` accepts ``value``."""
    return plain_json(value) is not None


# -- the pickle walk ------------------------------------------------------------------------------------------
# Opcode classes. A pickle is checked before it is run: every opcode is read (never executed) and the value it
# would build is modelled as a graph of nodes (own size, children), so sizes with shared references expanded,
# cycles and nesting depth are known exactly, in time linear in the payload.
_TEXT, _DATA, _LONG, _MEMOIZE, _GET, _EMPTY, _MARK, _LEAF, _INT, _SETITEMS, _APPENDS = range(11)
_ADDITEMS, _SETITEM, _APPEND, _BUILD, _TUPLE_N, _TUPLE_MARK, _DICT, _FROZENSET, _STACK_GLOBAL = range(11, 20)
_CALL, _PUT, _POP, _POP_MARK, _DUP, _FRAME, _STOP, _PROTO = range(20, 28)

# opcode -> (class, width of its fixed argument in bytes, signed argument / item count)
_TABLE: list[tuple[int, int, int] | None] = [None] * 256
for _names, _spec in (
    (("SHORT_BINSTRING", "SHORT_BINUNICODE"), (_TEXT, 1, 0)), (("BINUNICODE",), (_TEXT, 4, 0)),
    (("BINSTRING",), (_TEXT, 4, 1)), (("BINUNICODE8",), (_TEXT, 8, 0)),
    (("SHORT_BINBYTES",), (_DATA, 1, 0)), (("BINBYTES",), (_DATA, 4, 0)), (("BINBYTES8", "BYTEARRAY8"), (_DATA, 8, 0)),
    (("LONG1",), (_LONG, 1, 0)), (("LONG4",), (_LONG, 4, 1)),
    (("MEMOIZE",), (_MEMOIZE, 0, 0)), (("BINGET",), (_GET, 1, 0)), (("LONG_BINGET",), (_GET, 4, 0)),
    (("BINPUT",), (_PUT, 1, 0)), (("LONG_BINPUT",), (_PUT, 4, 0)),
    (("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET"), (_EMPTY, 0, 0)), (("MARK",), (_MARK, 0, 0)),
    (("NONE", "NEWTRUE", "NEWFALSE"), (_LEAF, 0, 0)), (("BINFLOAT",), (_LEAF, 8, 0)),
    (("BININT",), (_INT, 4, 1)), (("BININT1",), (_INT, 1, 0)), (("BININT2",), (_INT, 2, 0)),
    (("SETITEMS",), (_SETITEMS, 0, 0)), (("APPENDS",), (_APPENDS, 0, 0)), (("ADDITEMS",), (_ADDITEMS, 0, 0)),
    (("SETITEM",), (_SETITEM, 0, 0)), (("APPEND",), (_APPEND, 0, 0)), (("BUILD",), (_BUILD, 0, 0)),
    (("TUPLE1",), (_TUPLE_N, 0, 1)), (("TUPLE2",), (_TUPLE_N, 0, 2)), (("TUPLE3",), (_TUPLE_N, 0, 3)),
    (("TUPLE", "LIST"), (_TUPLE_MARK, 0, 0)), (("DICT",), (_DICT, 0, 0)), (("FROZENSET",), (_FROZENSET, 0, 0)),
    (("STACK_GLOBAL",), (_STACK_GLOBAL, 0, 0)),
    (("REDUCE", "NEWOBJ"), (_CALL, 0, 2)), (("NEWOBJ_EX",), (_CALL, 0, 3)),
    (("POP",), (_POP, 0, 0)), (("POP_MARK",), (_POP_MARK, 0, 0)), (("DUP",), (_DUP, 0, 0)),
    (("FRAME",), (_FRAME, 8, 0)), (("STOP",), (_STOP, 0, 0)), (("PROTO",), (_PROTO, 1, 0)),
):
    for _name in _names:
        _TABLE[getattr(pickle, _name)[0]] = _spec
# Sizes, in bytes of 64-bit CPython objects, of what an opcode builds (upper estimates, so a planted pickle cannot
# build more than its estimate): a new empty container, constant or instance by opcode (REDUCE runs a class's
# __init__, which builds its defaults: a default litellm ModelResponse is about 3.5 KB; NEWOBJ only allocates the
# instance, whose state comes after), then per string/bytes/long byte and per reference a container holds.
_NEW_COST = [0] * 256
for _name, _cost in (("EMPTY_LIST", 56), ("LIST", 56), ("EMPTY_DICT", 64), ("DICT", 64), ("EMPTY_TUPLE", 40),
                     ("TUPLE", 40), ("TUPLE1", 40), ("TUPLE2", 40), ("TUPLE3", 40), ("EMPTY_SET", 216),
                     ("FROZENSET", 216), ("NONE", 8), ("NEWTRUE", 8), ("NEWFALSE", 8), ("BINFLOAT", 24),
                     ("REDUCE", 16384), ("NEWOBJ", 256), ("NEWOBJ_EX", 256)):
    _NEW_COST[getattr(pickle, _name)[0]] = _cost
_TEXT_COST = 80  # a str object's header; each UTF-8 byte of it may take 4 bytes (one astral character widens all)
_DATA_COST = 64  # a bytes / bytearray header, plus one byte per byte
_INT_COST = 32  # an int object (a LONG adds its bytes)
_SLOT_COST = 64  # one reference held by a container: a list slot, or half a dict entry with its share of the table
_OPCODE_NAMES = {getattr(pickle, name)[0]: name for name in dir(pickle)
                 if name.isupper() and isinstance(getattr(pickle, name), bytes) and len(getattr(pickle, name)) == 1}


def check_pickle(body: bytes, *, max_decoded_bytes: int = MAX_DECODED_BYTES, max_depth: int = MAX_DEPTH) -> None:
    """Check, without running it, that the pickle ``body`` builds a bounded value.

    Accepts what :class:`Codec` writes (protocol 4/5 binary opcodes) and refuses: other opcodes (text-mode,
    extension registry, persistent ids, out-of-band buffers), a sparse memo, calls on anything but a class named
    by module and name, cycles, nesting deeper than ``max_depth``, and a value whose size with shared references
    expanded, or the work its construction does, goes over ``max_decoded_bytes`` (sizes are upper estimates in
    bytes of CPython objects: a container, a number or a string header by type, four bytes per byte of text, one
    per byte of bytes, 64 per reference a container holds, 16 KiB per class called with REDUCE, whose ``__init__``
    builds defaults).

    Raises:
        UnsafeValueError: naming the first thing that is wrong.
    """
    n = len(body)
    own: list[int] = []  # node -> its own size
    kids: list[list[int] | None] = []  # node -> children (None for a leaf)
    ints: dict[int, int] = {}  # node -> magnitude of an int leaf
    texts: dict[int, str] = {}  # node -> value of a short str leaf (module and class names)
    names: set[int] = set()  # nodes that are classes named by STACK_GLOBAL
    charged: list[int] = []  # nodes whose full size is work done while building (hashed, passed to a class)
    extra = 0  # work not visible in the graph (a size argument)
    stack: list[int] = []
    marks: list[int] = []
    memo: list[int] = []
    new_size, new_kids, push = own.append, kids.append, stack.append
    table = _TABLE
    pos = 0
    root = -1

    def refuse(why: str) -> UnsafeValueError:
        return UnsafeValueError(f"refusing the cached pickle: {why} (at byte {pos})")

    if n < 2 or body[0] != 0x80 or body[1] not in (4, 5):
        raise UnsafeValueError("refusing the cached pickle: not pickle protocol 4 or 5 (what this cache writes)")
    try:
        while pos < n:
            op = body[pos]
            spec = table[op]
            if spec is None:
                raise refuse(f"opcode {_OPCODE_NAMES.get(op, hex(op))} is not allowed in a cache payload")
            cls, width, signed = spec
            pos += 1
            if width:
                arg = body[pos] if width == 1 else int.from_bytes(body[pos:pos + width], "little", signed=signed == 1)
                pos += width
                if pos > n:
                    raise refuse("the pickle is truncated")
            if cls == _MEMOIZE:
                memo.append(stack[-1])
            elif cls <= _LONG:  # _TEXT, _DATA, _LONG: a length, then that many bytes
                if arg < 0 or pos + arg > n:
                    raise refuse("a length runs past the end of the pickle")
                node = len(own)
                if cls == _TEXT:
                    if arg <= 512:
                        texts[node] = body[pos:pos + arg].decode("utf-8", "replace")
                    new_size(_TEXT_COST + 4 * arg)
                elif cls == _LONG:
                    ints[node] = (abs(int.from_bytes(body[pos:pos + arg], "little", signed=True)) if arg <= 16
                                  else 1 << (8 * arg))
                    new_size(_INT_COST + arg)
                else:
                    new_size(_DATA_COST + arg)
                new_kids(None)
                push(node)
                pos += arg
            elif cls == _GET:
                if arg >= len(memo):
                    raise refuse(f"memo index {arg} was never stored")
                push(memo[arg])
            elif cls == _EMPTY:
                push(len(own))
                new_size(_NEW_COST[op])
                new_kids([])
            elif cls == _MARK:
                marks.append(len(stack))
            elif cls == _LEAF:
                push(len(own))
                new_size(_NEW_COST[op])
                new_kids(None)
            elif cls == _INT:
                ints[len(own)] = abs(arg)
                push(len(own))
                new_size(_INT_COST)
                new_kids(None)
            elif cls in (_SETITEMS, _APPENDS, _ADDITEMS):
                if not marks:
                    raise refuse("an opcode needs a MARK that is not there")
                start = marks.pop()
                items = stack[start:]
                del stack[start:]
                if cls == _SETITEMS:
                    if len(items) % 2:
                        raise refuse("SETITEMS with an odd number of items")
                    charged.extend(items[0::2])
                elif cls == _ADDITEMS:
                    charged.extend(items)
                target = kids[stack[-1]]
                if target is None:
                    raise refuse("an opcode adds to something that is not a container")
                target.extend(items)
                own[stack[-1]] += _SLOT_COST * len(items)
            elif cls in (_SETITEM, _APPEND, _BUILD):
                count = 2 if cls == _SETITEM else 1
                if len(stack) <= count:
                    raise refuse("stack underflow")
                items = stack[-count:]
                del stack[-count:]
                if cls != _APPEND:
                    charged.append(items[0])  # a dict key is hashed; a state is handed to __setstate__
                target = kids[stack[-1]]
                if target is None:
                    raise refuse("an opcode adds to something that is not a container")
                target.extend(items)
                own[stack[-1]] += _SLOT_COST * len(items)
            elif cls in (_TUPLE_N, _TUPLE_MARK, _DICT, _FROZENSET):
                if cls == _TUPLE_N:
                    count = spec[2]
                    if len(stack) < count:
                        raise refuse("stack underflow")
                    items = stack[len(stack) - count:]
                    del stack[len(stack) - count:]
                else:
                    if not marks:
                        raise refuse("an opcode needs a MARK that is not there")
                    start = marks.pop()
                    items = stack[start:]
                    del stack[start:]
                    if cls == _DICT:
                        if len(items) % 2:
                            raise refuse("DICT with an odd number of items")
                        charged.extend(items[0::2])
                    elif cls == _FROZENSET:
                        charged.extend(items)
                push(len(own))
                new_size(_NEW_COST[op] + _SLOT_COST * len(items))
                new_kids(items)
            elif cls == _STACK_GLOBAL:
                if len(stack) < 2 or stack[-1] not in texts or stack[-2] not in texts:
                    raise refuse("STACK_GLOBAL without a module and a name")
                size = 2 + len(texts[stack[-2]]) + len(texts[stack.pop()])
                stack[-1] = len(own)
                names.add(len(own))
                new_size(size)
                new_kids(None)
            elif cls == _CALL:  # REDUCE, NEWOBJ, NEWOBJ_EX: a class called with an args tuple (and kwargs)
                count = spec[2]
                if len(stack) < count:
                    raise refuse("stack underflow")
                parts = stack[-count:]
                del stack[-count:]
                if parts[0] not in names:
                    raise refuse("a call on something other than a class named by module and name")
                args: list[int] = []
                for part in parts[1:]:
                    found = kids[part]
                    if found is None:
                        raise refuse("class arguments that are not a tuple or dict")
                    args.extend(found)
                for item in args:
                    extra += ints.get(item, 0)  # bytes(n), a subclass' __new__(cls, n): n gets allocated
                charged.extend(args)
                push(len(own))
                new_size(_NEW_COST[op] + _SLOT_COST * len(args))
                new_kids(args)
            elif cls == _PUT:
                if arg == len(memo):
                    memo.append(stack[-1])
                elif arg < len(memo):
                    memo[arg] = stack[-1]
                else:
                    raise refuse(f"memo index {arg} leaves a gap (the memo has {len(memo)} entries)")
            elif cls == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif cls == _POP_MARK:
                if not marks:
                    raise refuse("an opcode needs a MARK that is not there")
                del stack[marks.pop():]
            elif cls == _DUP:
                push(stack[-1])
            elif cls == _FRAME:
                if arg > n - pos:
                    raise refuse("a frame runs past the end of the pickle")
            elif cls == _STOP:
                if len(stack) != 1 or marks:
                    raise refuse("STOP with a stack that does not hold exactly one value")
                root = stack[0]
                break
            # _PROTO: nothing to model
    except IndexError:
        raise refuse("stack underflow") from None
    if root < 0:
        raise refuse("the pickle has no STOP")

    size_of: dict[int, int] = {}  # node -> size with shared references expanded
    height: dict[int, int] = {}

    def measure(start: int) -> int:
        found = size_of.get(start)
        if found is not None:
            return found
        path = {start}
        work: list[list[int]] = [[start, 0, own[start], 1]]  # node, next child, size so far, height so far
        while work:
            frame = work[-1]
            node, index = frame[0], frame[1]
            children = kids[node]
            if children is not None and index < len(children):
                frame[1] = index + 1
                child = children[index]
                if kids[child] is None:
                    frame[2] += own[child]
                    if frame[3] < 2:
                        frame[3] = 2
                elif child in size_of:
                    frame[2] += size_of[child]
                    if frame[3] <= height[child]:
                        frame[3] = height[child] + 1
                elif child in path:
                    raise UnsafeValueError("refusing the cached pickle: it builds a cyclic value")
                elif len(work) >= max_depth:
                    raise UnsafeValueError(f"refusing the cached pickle: it nests deeper than {max_depth} levels")
                else:
                    path.add(child)
                    work.append([child, 0, own[child], 1])
                    continue
            else:
                work.pop()
                path.discard(node)
                size_of[node], height[node] = frame[2], frame[3]
                if work:
                    work[-1][2] += frame[2]
                    if work[-1][3] <= frame[3]:
                        work[-1][3] = frame[3] + 1
                    frame = work[-1]
            if frame[2] > max_decoded_bytes:
                raise UnsafeValueError(f"refusing the cached pickle: its value expands to more than "
                                       f"{max_decoded_bytes} bytes (shared references counted each time)")
            if frame[3] > max_depth:
                raise UnsafeValueError(f"refusing the cached pickle: it nests deeper than {max_depth} levels")
        return size_of[start]

    measure(root)
    total = extra
    for node in charged:
        total += own[node] if kids[node] is None else measure(node)
        if total > max_decoded_bytes:
            raise UnsafeValueError(f"refusing the cached pickle: building it takes more than {max_decoded_bytes} "
                                   "bytes of work (hashed keys, class arguments and sizes, counted expanded)")


# Upper bounds, in bytes of 64-bit CPython objects, of what one structural byte of a JSON document can build when
# orjson decodes it (measured worst cases: about 128 per ``{``, 64 per ``[``, 60 per ``,`` and 25 per ``"``).
_JSON_OBJECT_COST = 192  # ``{``: a dict and its first keys table (up to five entries), plus its slot in the parent
_JSON_ARRAY_COST = 96  # ``[``: a list, its first item slot and its slot in the parent
_JSON_ITEM_COST = 64  # ``,``: one more member (a dict entry with its share of a grown table, or a list slot) and
#                       a number object (int or float) it may hold
_JSON_QUOTE_COST = 48  # ``"``: half a string object header (a string is two quotes: 96 >= 80 bytes of header)
_JSON_BYTE_COST = 4  # any byte: a character of a str stored four bytes wide (one astral character in it does that)


def json_size_bound(body: bytes) -> int:
    """An upper bound, in bytes, on the memory the value of the JSON document ``body`` takes once decoded.

    Counted from the document's structural bytes (``{``, ``[``, ``,``, ``"``) without parsing it, at C speed,
    so a payload can be refused before anything is built: 16 MB of ``[{},{},...]`` builds about 600 MB of dicts.
    Bytes inside strings are counted as if structural, which only makes the bound larger.
    """
    return (_JSON_OBJECT_COST * body.count(b"{") + _JSON_ARRAY_COST * body.count(b"[")
            + _JSON_ITEM_COST * body.count(b",") + _JSON_QUOTE_COST * body.count(b'"')
            + _JSON_BYTE_COST * len(body) + 4096)


def json_depth_ok(value: Any, max_depth: int) -> bool:
    """True if ``value`` (decoded JSON) nests at most ``max_depth`` containers deep."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return False
        following: list[Any] = []
        for item in level:
            if type(item) is dict:
                following.extend(v for v in item.values() if type(v) is dict or type(v) is list)
            elif type(item) is list:
                following.extend(v for v in item if type(v) is dict or type(v) is list)
        level = following
    return True


# -- what a caller reads ----------------------------------------------------------------------------------------
_DSPY_LM_LEGACY = {f"dspy.clients.lm.{prefix}litellm_{kind}": kind for prefix in ("", "a")
                   for kind in ("completion", "text_completion", "responses_completion")}
_DSPY_LM_NATIVE = frozenset({"dspy.clients.lm15.complete", "dspy.clients.lm15.complete.async"})
_DSPY_RECORD_FORMAT = "dspy-lm15-result-v1"  # dspy.clients.call_result.CACHE_FORMAT (read from DSPy when present)
NATIVE_LM_ID = "dspyo3_core.native_lm.NativeLM"
"""The ``_fn_identifier`` :class:`~dspyo3_core.native_lm.NativeLM` caches its records under."""
_SCALARS = (str, int, float, bool, type(None), bytes, list, tuple, dict, set, frozenset)


def _dspy_record_format() -> str:
    try:
        from dspy.clients.call_result import CACHE_FORMAT
    except ImportError:  # a DSPy without the native engine: its records never reach this check
        return _DSPY_RECORD_FORMAT
    return str(CACHE_FORMAT)


def _list_of_dicts(value: Any) -> bool:
    return type(value) is list and all(type(item) is dict for item in value)


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` the way DSPy reads a provider answer: a dict's key, else an attribute (None when absent)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _tool_call_name(call: Any) -> Any:
    function = _field(call, "function")
    name = _field(function, "name") if function is not None else None
    return name if name is not None else _field(call, "name")


def _answer_problem(text: Any, calls: Any) -> str | None:
    """What stops DSPy's adapters from reading one answer (text, tool calls), or None if nothing does.

    They parse non-empty text, or take the tool calls when the signature has a ``dspy.ToolCalls`` output; an answer
    with neither is an ``AdapterParseError`` ("empty or null response"), a tool call without a function name a
    validation error.
    """
    if text is not None and not isinstance(text, str):
        return f"text that is a {type(text).__name__}, not a string"
    if calls:
        if not isinstance(calls, (list, tuple)):
            return f"tool calls that are a {type(calls).__name__}, not a list"
        if not all(isinstance(_tool_call_name(call), str) and _tool_call_name(call) for call in calls):
            return "a tool call without a function name"
        return None
    if not text:
        return "neither text nor tool calls (an empty answer)"
    return None


def _check_dspy_record(value: dict[str, Any]) -> str | None:
    if value.get("_dspy_format") != _dspy_record_format():
        return f"a DSPy result record of format {value.get('_dspy_format')!r}, not {_dspy_record_format()!r}"
    if not _list_of_dicts(value.get("responses")):
        return "a DSPy result record whose 'responses' is not a list of objects"
    outputs = value.get("outputs")
    if type(outputs) is not list or not outputs:
        return "a DSPy result record whose 'outputs' is not a non-empty list"
    for output in outputs:
        if isinstance(output, str):
            problem = _answer_problem(output, None)
        elif type(output) is dict:
            problem = _answer_problem(output.get("text"), output.get("tool_calls"))
        else:
            return f"a DSPy result record with an output that is a {type(output).__name__}, not a text or an object"
        if problem is not None:
            return f"a DSPy result record with an output that has {problem}"
    if type(value.get("usage", {})) is not dict or type(value.get("cost_details", {})) is not dict:
        return "a DSPy result record whose 'usage' / 'cost_details' are not objects"
    cost, model = value.get("cost"), value.get("response_model")
    if not (cost is None or type(cost) in (int, float)) or not (model is None or type(model) is str):
        return "a DSPy result record whose 'cost' is not a number or 'response_model' not a string"
    try:
        from dspy.clients.call_result import CallResult
    except ImportError:
        return None
    try:
        CallResult.load(value)  # exactly what DSPy does with it on a hit
    except Exception as exc:
        return f"a DSPy result record DSPy cannot load ({type(exc).__name__}: {exc})"
    return None


def _check_sdk_response(value: Any, kind: str) -> str | None:
    # DSPy's LiteLLM path caches the response object LiteLLM returned (ModelResponse, TextCompletionResponse,
    # ResponsesAPIResponse), pickled; ``lm.forward`` hands it back as is, so a plain dict or list is never one.
    if isinstance(value, _SCALARS):
        return f"a {type(value).__name__}, not a DSPy result record or the provider response object DSPy stores"
    if kind == "responses_completion":
        items = getattr(value, "output", None)
        if not isinstance(items, (list, tuple)) or not items:
            return f"a {type(value).__name__} without a non-empty 'output' list (not a Responses API answer)"
        try:
            from dspy.clients.legacy_outputs import responses_outputs
        except ImportError:
            return None
        try:
            answers = responses_outputs(value)  # exactly how DSPy reads it
        except Exception as exc:
            return f"a Responses API answer DSPy cannot read ({type(exc).__name__}: {exc})"
        for answer in answers:
            problem = _answer_problem(answer.get("text"), answer.get("tool_calls"))
            if problem is not None:
                return f"a Responses API answer with {problem}"
        return None
    choices = getattr(value, "choices", None)
    if not isinstance(choices, (list, tuple)) or not choices:
        return f"a {type(value).__name__} without a non-empty 'choices' list (not a provider response)"
    for choice in choices:
        message = _field(choice, "message")
        if message is not None:
            problem = _answer_problem(_field(message, "content"), _field(message, "tool_calls"))
        else:
            problem = _answer_problem(_field(choice, "text"), None)
        if problem is not None:
            return f"a provider response with a choice that has {problem}"
    return None


def _check_native_lm_record(value: Any) -> str | None:
    if type(value) is not dict:
        return f"a {type(value).__name__}, not a NativeLM record"
    choices, usage, model = value.get("choices"), value.get("usage"), value.get("model")
    if type(choices) is not list or not choices or not all(type(c) is dict for c in choices):
        return "a NativeLM record whose 'choices' is not a non-empty list of objects"
    for choice in choices:
        problem = _answer_problem(choice.get("content"), choice.get("tool_calls"))
        if problem is not None:
            return f"a NativeLM record with a choice that has {problem}"
        if not (choice.get("reasoning") is None or type(choice.get("reasoning")) is str):
            return "a NativeLM record with a choice whose 'reasoning' is not a string"
    if type(usage) is not dict or not all(type(usage.get(name)) is int for name in ("prompt_tokens",
                                                                                     "completion_tokens")):
        return "a NativeLM record whose 'usage' lacks integer prompt_tokens / completion_tokens"
    if "model" not in value or not (model is None or type(model) is str):
        return "a NativeLM record whose 'model' is missing or not a string"
    return None


def check_entry(request: Any, value: Any) -> None:
    """Check that ``value`` is what the caller of a lookup for ``request`` reads from the cache.

    DSPy LM calls (``dspy.LM`` through its native engine or LiteLLM, named by the request's ``_fn_identifier``)
    read a DSPy result record (a dict in DSPy's cache format that DSPy can load, with at least one output) or, on
    the LiteLLM path, the provider response object LiteLLM returned (never a plain dict) with at least one choice
    (``output`` item for the Responses API); ``NativeLM`` reads its record (at least one choice, integer usage);
    DSPy's TypeSafe LM a dict with ``model``, ``usage`` and ``answers``. Every answer in a record or response
    must be what DSPy's adapters parse: non-empty text, or tool calls that name their function. Any other request
    (``request_cache`` on your own function, embeddings, direct ``cache.put``) can hold any value.

    Raises:
        UnsafeValueError: what the value is and what the caller would have needed.
    """
    if type(request) is not dict:
        return
    ident = request.get("_fn_identifier")
    if ident is None:
        if request.get("provider") == "typesafe" and (
                type(value) is not dict or type(value.get("answers")) is not dict
                or type(value.get("usage")) is not dict or not isinstance(value.get("model"), str)):
            raise UnsafeValueError("cached value for a TypeSafe call is not a dict with model, usage and answers")
        return
    problem: str | None = None
    if ident in _DSPY_LM_NATIVE or ident in _DSPY_LM_LEGACY:
        if type(value) is dict and "_dspy_format" in value:
            problem = _check_dspy_record(value)
        elif ident in _DSPY_LM_NATIVE:
            problem = f"a {type(value).__name__}, not a DSPy result record"
        else:
            problem = _check_sdk_response(value, _DSPY_LM_LEGACY[ident])
    elif ident == NATIVE_LM_ID:
        problem = _check_native_lm_record(value)
    if problem is not None:
        raise UnsafeValueError(f"cached value for {ident} is {problem}")


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, allowed: frozenset[tuple[str, str]]) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:  # a dotted name walks attributes (``x.builtins.eval``): never followed
            if (module, name) in _BUILTINS or (module, name) in self._allowed:
                return super().find_class(module, name)
            if module.startswith(_TRUSTED_PREFIXES):
                found = super().find_class(module, name)
                # only the response models defined there, not whatever those modules happen to import
                if isinstance(found, type) and str(found.__module__).startswith(_TRUSTED_PREFIXES):
                    return found
        raise UnsafeValueError(
            f"refusing to unpickle {module}.{name}: not an allowed cache type "
            "(pass it in safe_types=[...] to TieredCache if you trust it)"
        )


class Codec:
    """Encodes cache values to bytes and back, refusing anything it did not write, does not trust, or that would
    decode to more than the limits allow.

    Args:
        safe_types: extra classes (besides ``litellm.types.*`` / ``openai.types.*``) a cached object may contain.
        max_payload_bytes: the largest payload :meth:`decode` reads (:meth:`fits` tells a writer).
        max_decoded_bytes: the largest estimated size in bytes a payload may decode to (JSON: an upper bound
            counted from its structure; pickle: shared references expanded), checked before decoding.
        max_depth: the deepest a decoded value may nest.
    """

    def __init__(self, safe_types: Iterable[type[Any]] = (), *, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 max_decoded_bytes: int = MAX_DECODED_BYTES, max_depth: int = MAX_DEPTH) -> None:
        allowed = set()
        for cls in safe_types:
            if not isinstance(cls, type):
                raise TypeError(f"safe_types entries must be classes, got {cls!r}")
            allowed.add((cls.__module__, cls.__qualname__))
        for name, limit in (("max_payload_bytes", max_payload_bytes), ("max_decoded_bytes", max_decoded_bytes),
                            ("max_depth", max_depth)):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise ValueError(f"{name} must be a positive integer, got {limit!r}")
        self.allowed = frozenset(allowed)
        self.max_payload_bytes = max_payload_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.max_depth = max_depth

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` as bytes bound to ``key``: JSON when it is plain data, else pickle."""
        header = key.encode() + b"\n"
        body = plain_json(value)
        if body is not None:
            return JSON_TAG + header + body
        return _PICKLE + header + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def fits(self, payload: bytes) -> bool:
        """True if ``payload`` is small enough for :meth:`decode` to read it back."""
        return len(payload) <= self.max_payload_bytes

    def decode(self, key: str, payload: bytes) -> Any:
        """The value ``payload`` holds, if it was written under ``key`` and stays within the limits.

        Raises:
            UnsafeValueError: the payload is too large, foreign, was written under another key, names an untrusted
                class, or would decode to a value over the size or depth limits.
        """
        if len(payload) > self.max_payload_bytes:
            raise UnsafeValueError(f"cache payload is larger than max_payload_bytes={self.max_payload_bytes}")
        tag, rest = payload[:4], payload[4:]
        stored_key, sep, body = rest.partition(b"\n")
        if not sep or stored_key != key.encode():
            raise UnsafeValueError("cache payload was written under a different key (or is not a dspyo3 payload)")
        if tag == JSON_TAG:
            bound = json_size_bound(body)
            if bound > self.max_decoded_bytes:
                raise UnsafeValueError(f"refusing the cached JSON: it may decode to up to {bound} bytes, more than "
                                       f"max_decoded_bytes={self.max_decoded_bytes} (estimated before decoding)")
            value = orjson.loads(body)
            if not json_depth_ok(value, self.max_depth):
                raise UnsafeValueError(f"cached JSON nests deeper than {self.max_depth} levels")
            return value
        if tag == _PICKLE:
            check_pickle(body, max_decoded_bytes=self.max_decoded_bytes, max_depth=self.max_depth)
            return _Unpickler(io.BytesIO(body), self.allowed).load()
        raise UnsafeValueError(f"unknown cache payload format {tag!r}")


_MEMORY_FILE_CLASSES = frozenset({("cachetools", "LRUCache"), ("cachetools", "_DefaultSize"),
                                  ("collections", "OrderedDict")})


def read_memory_cache_file(path: str | os.PathLike[str], codec: Codec) -> list[tuple[Any, Any]]:
    """The entries (cache key, answer), least recently used first, of a memory cache file written by
    ``dspy.clients.Cache.save_memory_cache`` or ``TieredCache.save_memory_cache`` (a pickled ``cachetools.LRUCache``,
    or a dict), read with ``codec``'s restricted unpickler after the same structure check as a Redis entry (its size
    budget scaled to the file: a trusted file may be large, but never builds more than an estimated 512x its size,
    where what DSPy writes estimates at 50-150x).

    Raises:
        UnsafeValueError: naming the file and what is wrong with it (a class outside the allow-list, a corrupt or
            truncated pickle, something other than a memory cache).
    """
    where = os.fspath(path)
    with open(where, "rb") as file:
        data = file.read()
    try:
        check_pickle(data, max_decoded_bytes=max(codec.max_decoded_bytes, 512 * len(data)),
                     max_depth=codec.max_depth + 8)
        loaded = _Unpickler(io.BytesIO(data), codec.allowed | _MEMORY_FILE_CLASSES).load()
    except UnsafeValueError as exc:
        raise UnsafeValueError(f"{where}: {exc}") from None
    except Exception as exc:  # truncated or corrupt
        raise UnsafeValueError(f"{where} is not a readable memory cache file ({type(exc).__name__}: {exc})") from None
    if type(loaded) is dict:
        return list(loaded.items())
    from cachetools import LRUCache  # DSPy's memory cache (a dependency of DSPy)

    if not isinstance(loaded, LRUCache):
        raise UnsafeValueError(f"{where} holds a {type(loaded).__name__}, not a memory cache "
                               "(a cachetools.LRUCache written by save_memory_cache)")
    entries: list[tuple[Any, Any]] = []
    try:
        while loaded:
            entries.append(loaded.popitem())  # an LRUCache gives up its least recently used entry first
    except Exception as exc:  # a cache object whose fields were tampered with
        raise UnsafeValueError(f"{where} holds a damaged memory cache ({type(exc).__name__}: {exc})") from None
    return entries
