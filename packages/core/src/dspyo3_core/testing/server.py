"""An OpenAI-compatible chat-completions server on loopback, for tests that drive a real ``dspy.LM``.

The server speaks enough of the OpenAI wire format for LiteLLM (and DSPy's native engine) to treat it as a
real provider: ``POST /v1/chat/completions`` (JSON or server-sent-event streaming; Azure's
``/openai/deployments/<name>/chat/completions`` too), ``POST /v1/embeddings`` (deterministic stand-in vectors,
:func:`embedding_of`) and ``GET /v1/models``.
Replies are scripted, in order, with optional latency and injected faults::

    with LMServer() as server:
        server.script(
            Reply.rate_limited(retry_after=0.1),      # 429 with Retry-After
            chat_reply(answer="Paris"),             # then a DSPy ChatAdapter-shaped answer
        )
        lm = dspy.LM("openai/test", api_base=server.api_base, api_key="test", cache=False)

When the script is empty, ``server.responder(request) -> Reply | str`` answers; with no responder the server
returns HTTP 400 naming the problem (400 is not retried, so a missing script fails fast).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

_ids = itertools.count(1)


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        content: assistant message text (for streaming, sent in chunks of ``chunk_size`` characters).
        latency: seconds to wait before answering.
        status: HTTP status; anything but 200 sends an OpenAI-style error body.
        headers: extra response headers (``Retry-After`` for 429s).
        raw_body: send these bytes as the body instead of a JSON completion (malformed-body faults).
        hang: hold the connection open this many seconds without answering (client timeouts).
        error_message: message in the error body for non-200 statuses.
        chunk_size: characters per streamed delta.
        chunk_delay: seconds between streamed deltas.
        delay_from: the first stream event ``chunk_delay`` is waited before (default 1: every event but the
            first); a larger value sends the first events at once (e.g. Anthropic's framing events).
    """

    content: str = ""
    latency: float = 0.0
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None
    hang: float | None = None
    error_message: str = ""
    chunk_size: int = 8
    chunk_delay: float = 0.0
    delay_from: int = 1

    @classmethod
    def text(cls, content: str, latency: float = 0.0) -> Reply:
        """A normal answer."""
        return cls(content=content, latency=latency)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> Reply:
        """HTTP 429 with a ``Retry-After`` header."""
        return cls(
            status=429,
            headers={"Retry-After": f"{retry_after:g}"},
            error_message="Rate limit reached for requests (scripted by dspyo3 LMServer)",
        )

    @classmethod
    def server_error(cls, status: int = 500, message: str = "internal error (scripted)") -> Reply:
        """An HTTP 5xx (or any status) with an OpenAI-style error body."""
        return cls(status=status, error_message=message)

    @classmethod
    def hang_up(cls, seconds: float = 30.0) -> Reply:
        """Accept the request and answer nothing for ``seconds`` (drives client timeouts)."""
        return cls(hang=seconds)

    @classmethod
    def malformed(cls, body: bytes = b'{"choices": [ this is not json') -> Reply:
        """HTTP 200 whose body is not a valid completion."""
        return cls(raw_body=body)


ReplyLike = Union[Reply, str]
Responder = Callable[[dict[str, Any]], ReplyLike]


def chat_reply(**fields: Any) -> str:
    """Format output fields the way DSPy's ChatAdapter expects them (``[[ ## name ## ]]`` sections)."""
    parts: list[str] = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


# A section ends at the next marker, or at the instructions ChatAdapter appends after the last input field.
_SECTION = re.compile(
    r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with the corresponding output|\Z)", re.S
)


def parse_fields(text: str) -> dict[str, str]:
    """Read ``[[ ## name ## ]]`` sections out of a ChatAdapter-formatted message."""
    return {name: value.strip() for name, value in _SECTION.findall(text) if name != "completed"}


def last_user_text(request: Mapping[str, Any]) -> str:
    """Text of the last user message of a chat-completions request (string or content-part list)."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def field_responder(fn: Callable[[dict[str, str]], Mapping[str, Any]]) -> Responder:
    """A responder that reads the DSPy input fields of each request and answers ``fn(inputs)`` as output fields."""

    def respond(request: dict[str, Any]) -> str:
        return chat_reply(**fn(parse_fields(last_user_text(request))))

    return respond


_PLACEHOLDER = re.compile(r"\[\[ ## (\w+) ## \]\]\n\{")


def prompt_text(request: Mapping[str, Any]) -> str:
    """All message text of a chat-completions request, in order (system, demos, the last user message)."""
    parts: list[str] = []
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
        else:
            parts.append(str(content or ""))
    return "\n".join(parts)


def output_field_names(request: Mapping[str, Any]) -> list[str]:
    """Output fields a ChatAdapter prompt asks for (placeholders of its system message that are not inputs)."""
    inputs = set(parse_fields(last_user_text(request)))
    system = next((m.get("content") or "" for m in request.get("messages") or [] if m.get("role") == "system"), "")
    names = [name for name in _PLACEHOLDER.findall(str(system)) if name not in inputs and name != "completed"]
    return list(dict.fromkeys(names))


def digest_responder(latency: float = 0.0) -> Responder:
    """Answer every requested output field with a digest of the whole prompt, after ``latency`` seconds.

    Deterministic, and sensitive to everything in the prompt (instructions, demos, inputs), so two programs give
    the same answers only if they send the same prompts: what tests comparing a saved program with its reload need.
    """
    import hashlib

    def respond(request: dict[str, Any]) -> Reply:
        digest = hashlib.sha256(prompt_text(request).encode()).hexdigest()[:16]
        fields = {name: f"{name}-{digest}" for name in output_field_names(request)} or {"answer": f"answer-{digest}"}
        return Reply(content=chat_reply(**fields), latency=latency)

    return respond


def usage_of(request: Mapping[str, Any], content: str, n: int = 1) -> dict[str, int]:
    """OpenAI-style ``usage`` for a request and its answer (whitespace tokens: stable, not a real tokenizer)."""
    prompt = sum(_count_tokens(json.dumps(m.get("content", ""))) for m in request.get("messages") or [])
    completion = _count_tokens(content) * n
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(request: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    """The JSON body of a non-streaming chat completion answering ``request`` with ``reply``."""
    n = int(request.get("n") or 1)
    return {
        "id": f"chatcmpl-dspyo3-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "dspyo3-test"),
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": reply.content}, "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": usage_of(request, reply.content, n),
    }


def embedding_of(text: str, dim: int = 16) -> list[float]:
    """A deterministic stand-in embedding (from a hash of the text; equal texts, equal vectors)."""
    import hashlib

    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 127.5) / 127.5, 6) for i in range(dim)]


def embeddings_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``/v1/embeddings`` answer: one :func:`embedding_of` vector per input."""
    inputs = request.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("input must be a string or a list of strings")
    tokens = sum(_count_tokens(t) for t in texts)
    return {"object": "list", "model": request.get("model", "dspyo3-embed"),
            "data": [{"object": "embedding", "index": i, "embedding": embedding_of(t)} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def stream_events(request: Mapping[str, Any], reply: Reply) -> list[bytes]:
    """The server-sent events of a streaming completion (``reply.chunk_delay`` goes between content events)."""
    ident = f"chatcmpl-dspyo3-{next(_ids)}"
    model = request.get("model", "dspyo3-test")

    def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
        }
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n".encode()

    events = [event({"role": "assistant", "content": ""})]
    size = max(1, reply.chunk_size)
    events.extend(event({"content": reply.content[i:i + size]}) for i in range(0, len(reply.content), size))
    events.append(event({}, finish="stop"))
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(event({}, usage=usage_of(request, reply.content, 1)))
    events.append(b"data: [DONE]\n\n")
    return events


def openai_request_of(anthropic: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic messages request in the OpenAI shape responders expect (system prompt as the first message)."""
    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict))

    messages = [{"role": "system", "content": text(anthropic["system"])}] if anthropic.get("system") else []
    messages.extend({"role": m.get("role", "user"), "content": text(m.get("content"))}
                    for m in anthropic.get("messages") or [])
    return {**anthropic, "messages": messages}


def anthropic_body(request: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` answer."""
    usage = usage_of(request, reply.content)
    return {"id": f"msg_dspyo3_{next(_ids)}", "type": "message", "role": "assistant",
            "model": request.get("model", "dspyo3-test"), "content": [{"type": "text", "text": reply.content}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}}


def anthropic_stream_events(request: Mapping[str, Any], reply: Reply) -> list[bytes]:
    """Anthropic's server-sent events for a streamed message."""
    usage = usage_of(request, reply.content)

    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    events = [event("message_start", {"message": {
        "id": f"msg_dspyo3_{next(_ids)}", "type": "message", "role": "assistant", "content": [],
        "model": request.get("model", "dspyo3-test"), "usage": {"input_tokens": usage["prompt_tokens"],
                                                               "output_tokens": 0}}}),
              event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
              event("ping", {})]
    size = max(1, reply.chunk_size)
    events.extend(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                      "text": reply.content[i:i + size]}})
                  for i in range(0, len(reply.content), size))
    events += [event("content_block_stop", {"index": 0}),
               event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": usage["completion_tokens"]}}),
               event("message_stop", {})]
    return events


def _count_tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


class LMServer:
    """The loopback server. Start it with ``with LMServer() as server`` or :meth:`start`/:meth:`stop`.

    Chat completions are served at ``/v1/chat/completions`` (OpenAI wire format) and ``/v1/messages`` (Anthropic's),
    both streaming or not; scripts and responders see every request in the OpenAI shape (``messages`` with the
    system prompt first), plus ``_path`` and ``_headers``.

    Args:
        responder: answers requests once the script is used up.
        host: interface to bind; loopback only.
        api_key: when set, requests without this key (``Authorization: Bearer``, ``api-key`` or ``x-api-key``)
            get 401 in the route's error format.
        echo_key: put the key a rejected request sent into the 401 message, as some gateways do (for testing
            that no message shows it).
        ssl_context: serve HTTPS with this server-side context (``url`` then starts with ``https://``).
    """

    def __init__(self, responder: Responder | None = None, host: str = "127.0.0.1", api_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, echo_key: bool = False) -> None:
        if host not in {"127.0.0.1", "::1", "localhost"}:
            raise ValueError(f"LMServer binds loopback only; got host={host!r}")
        self.responder = responder
        self.host = host
        self.api_key = api_key
        self.echo_key = echo_key
        self.ssl_context = ssl_context
        self.rejected = 0  # requests refused for a wrong or missing key
        self.hanging = 0  # requests held open by Reply.hang_up right now (the client has not been answered)
        self.chunks_sent = 0  # stream events written so far, over every streamed reply
        self.requests: list[dict[str, Any]] = []
        self._script: deque[ReplyLike] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------------

    def script(self, *replies: ReplyLike) -> LMServer:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self._script.extend(replies)
        return self

    def reset(self) -> None:
        """Forget queued replies and recorded requests."""
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def pending(self) -> int:
        """Scripted replies not yet sent."""
        return len(self._script)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with an ``ssl_context``)."""
        if self._httpd is None:
            raise RuntimeError("LMServer is not running; call start() or use it as a context manager")
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    @property
    def api_base(self) -> str:
        """Base URL to give ``dspy.LM(api_base=...)``: ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    def start(self) -> LMServer:
        """Bind a free port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"server_state": self})
        server_class = _IPv6Server if self.host == "::1" else _Server
        self._httpd = server_class((self.host, 0), handler)
        if self.ssl_context is not None:
            self._httpd.socket = self.ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dspyo3-lm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (hanging requests are let go)."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering -------------------------------------------------------------------------------------------

    def _next_reply(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(request)
            item: ReplyLike | None = self._script.popleft() if self._script else None
        if item is None and self.responder is not None:
            item = self.responder(request)
        if item is None:
            return Reply(status=400, error_message="dspyo3 LMServer has no scripted reply left; "
                         "call server.script(...) or set server.responder")
        return Reply.text(item) if isinstance(item, str) else item


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # socketserver's default of 5 drops connections under benchmark concurrency


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_state: LMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in {"/v1/models", "/models"}:
            self._send_json(200, {"object": "list", "data": [{"id": "dspyo3-test", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        route = self.path.split("?")[0].rstrip("/")
        if route.endswith("/embeddings"):
            try:
                request = json.loads(raw or b"{}")
                body = embeddings_body(request)
            except (json.JSONDecodeError, ValueError, AttributeError) as exc:
                self._send_json(400, {"error": {"message": f"bad embeddings request: {exc}",
                                                "type": "invalid_request_error"}})
                return
            with state._lock:
                state.requests.append({**request, "_path": self.path})
            self._send_json(200, body)
            return
        # /v1/chat/completions, Azure's /openai/deployments/<name>/chat/completions?api-version=..., /v1/messages
        anthropic = route.endswith("/messages")
        if not (route.endswith("/chat/completions") or anthropic):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        if state.api_key is not None and state.api_key not in self._keys():
            with state._lock:
                state.rejected += 1
            sent = " ".join(sorted(self._keys())) if state.echo_key else ""
            self._send_error(401, f"Incorrect API key provided{': ' + sent if sent else ''} (dspyo3 LMServer)",
                             anthropic)
            return
        try:
            request = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        if anthropic:
            request = openai_request_of(request)
        request["_headers"] = {key.lower(): value for key, value in self.headers.items()}
        request["_path"] = self.path
        reply = state._next_reply(request)
        if reply.hang is not None:
            with state._lock:
                state.hanging += 1
            try:
                state._stopping.wait(reply.hang)
            finally:
                with state._lock:
                    state.hanging -= 1
            self.close_connection = True
            return
        if reply.latency:
            state._stopping.wait(reply.latency)
        if reply.status != 200:
            self._send_error(reply.status, reply.error_message or f"HTTP {reply.status}", anthropic, reply.headers)
            return
        if reply.raw_body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.raw_body)))
            self.end_headers()
            self.wfile.write(reply.raw_body)
            return
        if request.get("stream"):
            self._stream(request, reply, anthropic)
        elif anthropic:
            self._send_json(200, anthropic_body(request, reply), reply.headers)
        else:
            self._send_json(200, completion_body(request, reply), reply.headers)

    def _keys(self) -> set[str]:
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return {bearer, self.headers.get("api-key", ""), self.headers.get("x-api-key", "")} - {""}

    def _send_error(self, status: int, message: str, anthropic: bool, headers: Mapping[str, str] | None = None) -> None:
        if anthropic:
            kind = {401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error"}.get(
                status, "api_error" if status >= 500 else "invalid_request_error")
            self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)
            return
        kind = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status, "server_error")
        self._send_json(status, {"error": {"message": message, "type": kind, "code": kind}}, headers)

    def _stream(self, request: dict[str, Any], reply: Reply, anthropic: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        events = anthropic_stream_events(request, reply) if anthropic else stream_events(request, reply)
        for i, chunk in enumerate(events):
            if reply.chunk_delay and i >= max(1, reply.delay_from):
                self.server_state._stopping.wait(reply.chunk_delay)
            self.wfile.write(chunk)
            self.wfile.flush()
            with self.server_state._lock:
                self.server_state.chunks_sent += 1


async def serve_async(responder: Responder, host: str = "127.0.0.1", port: int = 0,
                      ready: Callable[[str], None] | None = None, idle_timeout: float = 60.0) -> None:
    """Serve ``responder`` on one asyncio loop (no thread per connection) until cancelled.

    What the ``python -m dspyo3_core.testing`` command runs: a fixed-latency server for benchmarks must not add
    latency of its own, and a thread per connection contending for the GIL does at a few hundred requests/s.
    Routes: ``POST .../chat/completions`` (JSON or SSE) and ``GET /v1/models``; HTTP/1.1 keep-alive. Replies honour
    ``latency``, ``status``, ``headers``, ``raw_body``, ``hang``, ``chunk_size`` and ``chunk_delay`` like
    :class:`LMServer`, but requests are not recorded (the responder sees ``_headers``, lower-cased, and ``_path``
    like LMServer's). Malformed requests get a 4xx naming the problem; a
    connection idle for ``idle_timeout`` seconds is closed. ``ready(api_base)`` is called once the socket listens.
    """
    import asyncio

    if host not in {"127.0.0.1", "::1", "localhost"}:
        raise ValueError(f"serve_async binds loopback only; got host={host!r}")
    max_body = 16 << 20

    def response(status: int, body: bytes, content_type: str = "application/json",
                 headers: Mapping[str, str] | None = None, close: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close" if close else "Connection: keep-alive"]
        lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def error(status: int, message: str, kind: str = "invalid_request_error", close: bool = False,
              headers: Mapping[str, str] | None = None) -> bytes:
        return response(status, json.dumps({"error": {"message": message, "type": kind}}).encode(),
                        headers=headers, close=close)

    async def answer(writer: asyncio.StreamWriter, request: dict[str, Any], close: bool) -> bool:
        """Write the reply; False when the connection must end."""
        item = responder(request)
        reply = Reply.text(item) if isinstance(item, str) else item
        if reply.hang is not None:
            await asyncio.sleep(reply.hang)
            return False
        if reply.latency:
            await asyncio.sleep(reply.latency)
        if reply.status != 200:
            kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
            writer.write(error(reply.status, reply.error_message or f"HTTP {reply.status}", kind, close, reply.headers))
        elif reply.raw_body is not None:
            writer.write(response(200, reply.raw_body, close=close))
        elif request.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            for i, chunk in enumerate(stream_events(request, reply)):
                if reply.chunk_delay and i > 0:
                    await asyncio.sleep(reply.chunk_delay)
                writer.write(chunk)
                await writer.drain()
            return False
        else:
            writer.write(response(200, json.dumps(completion_body(request, reply)).encode(), headers=reply.headers,
                                  close=close))
        return True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_timeout)
                except asyncio.LimitOverrunError:
                    writer.write(error(431, "request headers too large", close=True))
                    return
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*request_line.split(" "), "", ""][:3]
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(error(411, "send the body with Content-Length (chunked bodies are not read)",
                                       close=True))
                    return
                try:
                    length = int(headers.get("content-length") or 0)
                    if not 0 <= length <= max_body:
                        raise ValueError
                except ValueError:
                    writer.write(error(400, f"bad Content-Length {headers.get('content-length')!r}", close=True))
                    return
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                close = headers.get("connection", "").lower() == "close"
                route = path.split("?")[0].rstrip("/")
                if method == "GET" and route in {"/v1/models", "/models"}:
                    models = {"object": "list", "data": [{"id": "dspyo3-test", "object": "model"}]}
                    writer.write(response(200, json.dumps(models).encode(), close=close))
                elif method == "POST" and route.endswith("/embeddings"):
                    try:
                        payload = json.dumps(embeddings_body(json.loads(body or b"{}"))).encode()
                        writer.write(response(200, payload, close=close))
                    except (ValueError, AttributeError) as exc:
                        writer.write(error(400, f"bad embeddings request: {exc}", close=close))
                elif method == "POST" and route.endswith("/chat/completions"):
                    try:
                        request = json.loads(body or b"{}")
                        if not isinstance(request, dict):
                            raise ValueError(f"the body must be a JSON object, not {type(request).__name__}")
                        request["_headers"] = headers  # lower-cased names, as LMServer records them
                        request["_path"] = path
                        keep = await answer(writer, request, close)
                    except ValueError as exc:  # JSON, UTF-8 and field-type problems of the request
                        message = "request body is not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
                        writer.write(error(400, message, close=close))
                        keep = True
                    except Exception as exc:  # a responder bug must not kill the connection silently
                        writer.write(error(500, f"{type(exc).__name__}: {exc}", "server_error", close=True))
                        keep = False
                    if not keep:
                        return
                else:
                    writer.write(error(404, f"no route {method} {path}", "not_found", close=close))
                await writer.drain()
                if close:
                    return
        finally:
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

    server = await asyncio.start_server(handle, host, port, backlog=1024, limit=1 << 20)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    base = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}"
    if ready is not None:
        ready(base + "/v1")
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m dspyo3_core.testing``: serve on loopback until the process gets SIGTERM or SIGINT.

    Prints the ``api_base`` on the first line of stdout. Every request is answered by :func:`digest_responder`
    with ``--latency`` seconds of delay, on one asyncio loop (:func:`serve_async`): what benchmarks against a
    fixed-latency LM need, in a process of their own.
    """
    import argparse
    import asyncio
    import signal

    parser = argparse.ArgumentParser(prog="python -m dspyo3_core.testing", description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback interface to bind (127.0.0.1 or ::1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error(f"--latency must be >= 0 seconds, got {args.latency}")
    if args.host not in {"127.0.0.1", "::1", "localhost"}:
        parser.error(f"--host must be a loopback address (127.0.0.1, ::1 or localhost), got {args.host!r}")

    def _terminate(*_: object) -> None:
        # nothing to flush; exiting at once spares the log a cancelled-handler traceback per open connection
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        asyncio.run(serve_async(digest_responder(args.latency), args.host, args.port,
                                ready=lambda base: print(base, flush=True)))
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0
