"""The server behind ``dspyo3::testing::LoopbackLm``, compiled into the Rust library and run with ``python -c``.

It serves ``dspyo3_core.testing``'s OpenAI-compatible loopback server (``serve_async``) with a responder that
answers every output field of a ChatAdapter prompt with a value of the field's type, derived from a digest of the
whole prompt, so a typed ``Predict`` deserializes the answer into the user's Rust struct:

* ``str`` fields (no type note): ``<field>-<digest>``;
* ``int`` / ``float`` / ``bool``: a number or truth value taken from the digest;
* ``Literal`` / ``Enum``: one of the allowed values, picked by the digest;
* anything else (lists, dicts, tuples, Optionals, Pydantic models): a value built from the JSON schema DSPy
  prints for it.

Faults are queued from the parent over stdin, one JSON object a line, each answered with one line on stdout:
``{"fault": "rate_limited" | "server_error" | "hang" | "malformed" | "unparseable", "times": n, ...}`` makes
the next ``n`` chat requests fail that way (``retry_after``, ``status``, ``seconds`` as the fault needs);
``{"requests": true}`` answers with the number of chat requests received so far; ``{"last_headers": true}``
with the headers of the last chat request, a JSON object of lower-cased names (``{}`` before any). End of stdin
(the parent went away) stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import threading
from collections import deque
from typing import Any

from dspyo3_core.testing.server import Reply, chat_reply, last_user_text, parse_fields, prompt_text, serve_async

# `[[ ## name ## ]]\n{name}        # note: the value you produce <note>` in ChatAdapter's system message
_FIELD = re.compile(r"^\[\[ ## (\w+) ## \]\]\n\{\1\}(?: +# note: the value you produce (.*))?$", re.M)
_SCHEMA = "must adhere to the JSON schema: "


class Digest:
    """Deterministic values drawn from a digest of the prompt (and the field name)."""

    def __init__(self, prompt: str) -> None:
        self.hex = hashlib.sha256(prompt.encode()).hexdigest()[:16]

    def number(self, salt: str) -> int:
        return int(hashlib.sha256(f"{self.hex}:{salt}".encode()).hexdigest()[:8], 16)


def value_for_schema(schema: dict[str, Any], defs: dict[str, Any], name: str, digest: Digest, depth: int = 0) -> Any:
    """A value matching a (Pydantic-made) JSON schema."""
    if depth > 8:
        return None
    if "$ref" in schema:
        return value_for_schema(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, name, digest, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        values = schema["enum"]
        return values[digest.number(name) % len(values)] if values else None
    for key in ("anyOf", "oneOf"):
        if key in schema:
            # an Optional gets its value, not None: the user's code sees the field filled in
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return value_for_schema(options[0], defs, name, digest, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return f"{name}-{digest.hex}"
    if kind == "integer":
        return digest.number(name) % 100
    if kind == "number":
        return (digest.number(name) % 100) / 100
    if kind == "boolean":
        return digest.number(name) % 2 == 0
    if kind == "null":
        return None
    if kind == "array":
        if "prefixItems" in schema:
            return [value_for_schema(s, defs, f"{name}.{i}", digest, depth + 1)
                    for i, s in enumerate(schema["prefixItems"])]
        count = max(int(schema.get("minItems", 0)), 2)
        return [value_for_schema(schema.get("items", {}), defs, f"{name}.{i}", digest, depth + 1) for i in range(count)]
    if kind == "object" or "properties" in schema:
        if "properties" in schema:
            return {key: value_for_schema(sub, defs, key, digest, depth + 1)
                    for key, sub in schema["properties"].items()}
        extra = schema.get("additionalProperties")
        value_schema = extra if isinstance(extra, dict) else {"type": "string"}
        return {f"{name}-key": value_for_schema(value_schema, defs, name, digest, depth + 1)}
    return f"{name}-{digest.hex}"  # `Any` and anything unknown: a string is a valid JSON value


def value_for_note(name: str, note: str | None, digest: Digest) -> Any:
    """The answer to one output field, given the type note ChatAdapter wrote after its placeholder."""
    if not note:
        return f"{name}-{digest.hex}"
    if note == "must be True or False":
        return digest.number(name) % 2 == 0
    if note == "must be a single int value":
        return digest.number(name) % 100
    if note == "must be a single float value":
        return (digest.number(name) % 100) / 100
    for prefix in ("must exactly match (no extra characters) one of: ", "must be one of: "):
        if note.startswith(prefix):
            values = note[len(prefix):].split("; ")
            return values[digest.number(name) % len(values)]
    if note.startswith(_SCHEMA):
        try:
            schema = json.loads(note[len(_SCHEMA):])
        except ValueError:
            return f"{name}-{digest.hex}"
        return value_for_schema(schema, schema.get("$defs", {}), name, digest)
    return f"{name}-{digest.hex}"


def typed_answer(request: dict[str, Any]) -> str:
    """Every requested output field answered with a value of its type (ChatAdapter's format)."""
    digest = Digest(prompt_text(request))
    inputs = set(parse_fields(last_user_text(request)))
    system = next((m.get("content") or "" for m in request.get("messages") or [] if m.get("role") == "system"), "")
    fields = {name: value_for_note(name, note, digest) for name, note in _FIELD.findall(str(system))
              if name not in inputs and name != "completed"}
    return chat_reply(**(fields or {"answer": f"answer-{digest.hex}"}))


def fault_reply(fault: dict[str, Any]) -> Reply:
    kind = fault["fault"]
    if kind == "rate_limited":
        return Reply.rate_limited(retry_after=float(fault.get("retry_after", 1.0)))
    if kind == "server_error":
        status = int(fault.get("status", 500))
        if not 400 <= status <= 599:
            raise ValueError(f"a server error needs an HTTP error status (400-599), got {status}")
        return Reply.server_error(status=status, message="internal error (injected)")
    if kind == "hang":
        return Reply.hang_up(float(fault.get("seconds", 30.0)))
    if kind == "malformed":
        return Reply.malformed()
    if kind == "unparseable":
        return Reply.text("This answer follows no output format at all.")
    raise ValueError(f"unknown fault {kind!r}")


class State:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.faults: deque[dict[str, Any]] = deque()
        self.requests = 0
        self.last_headers: dict[str, str] = {}
        self.lock = threading.Lock()

    def respond(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests += 1
            self.last_headers = dict(request.get("_headers") or {})
            fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            return fault_reply(fault)
        return Reply(content=typed_answer(request), latency=self.latency)

    def control(self) -> None:
        for line in sys.stdin:
            try:
                command = json.loads(line)
                if "fault" in command:
                    fault_reply(command)  # validate before queueing
                    with self.lock:
                        self.faults.extend([command] * int(command.get("times", 1)))
                    answer = "ok"
                elif command.get("requests"):
                    with self.lock:
                        answer = str(self.requests)
                elif command.get("last_headers"):
                    with self.lock:
                        answer = json.dumps(self.last_headers)
                else:
                    answer = f"error: unknown command {line.strip()!r}"
            except (ValueError, TypeError, KeyError) as exc:
                answer = f"error: {exc}"
            print(answer, flush=True)
        os._exit(0)  # the parent closed stdin: it is gone


def main() -> None:
    parser = argparse.ArgumentParser(prog="dspyo3 LoopbackLm")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    state = State(args.latency)
    threading.Thread(target=state.control, daemon=True).start()
    try:
        asyncio.run(serve_async(state.respond, ready=lambda base: print(base, flush=True)))
    except KeyboardInterrupt:
        pass


main()
