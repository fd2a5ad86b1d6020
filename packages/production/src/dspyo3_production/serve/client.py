"""A small typed client for a ``dspyo3 serve`` service: :class:`Client` (blocking) and :class:`AsyncClient`
(asyncio), both on one keep-alive ``httpx`` connection pool.

    from dspyo3_production.serve import Client

    with Client("http://127.0.0.1:8000", api_key=os.environ.get("DSPYO3_SERVE_KEY")) as client:
        prediction = client.predict("qa", question="What is DSPy?")
        print(prediction["answer"], prediction.version, prediction.cost)
        for event in client.stream("qa", question="What is DSPy?"):
            if isinstance(event, StreamChunk):
                print(event.text, end="")
            elif isinstance(event, Prediction):
                print("\\n", event.outputs)

Every failure the service reports (4xx/5xx, an ``error`` event in a stream) and every failure to reach it raises
:class:`ServeClientError`; the API key is never part of an error's text or of a client's ``repr``.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx

__all__ = [
    "AsyncClient",
    "Client",
    "Prediction",
    "ProgramInfo",
    "ServeClientError",
    "StreamChunk",
    "StreamEvent",
    "StreamStatus",
]

_USER_AGENT: Final = "dspyo3-serve-client/1"
# the HTTP status a service error type stands for, for errors that arrive without one (stream and batch items)
_STATUS_OF_TYPE: Final[Mapping[str, int]] = {
    "bad_request": 400,
    "malformed_json": 400,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "payload_too_large": 413,
    "validation_error": 422,
    "rate_limited": 429,
    "over_budget": 429,
    "internal_error": 500,
    "overloaded": 503,
    "unavailable": 503,
    "timeout": 504,
}
_KEY_CHARS: Final = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: a valid header value token
_SNIPPET: Final = 160


class ServeClientError(Exception):
    """A request the service refused or failed, or that never reached it.

    ``status`` is the HTTP status (0 when no response arrived: connection refused, time-out, broken stream);
    ``type`` the service's error type (``validation_error``, ``unauthorized``, ``rate_limited``, ``over_budget``,
    ``overloaded``, ``timeout``, ``not_found``, ``payload_too_large``, ...; ``http_error`` for a response that is
    not a dspyo3 error body, e.g. a proxy's HTML 502; ``connection_error`` / ``timeout`` / ``protocol_error`` on the
    client side); ``fields`` the per-field problems of a 422; ``retry_after`` the seconds the service asked to wait
    (429/503); ``request_id`` the id to quote when asking the service's operators.
    """

    def __init__(self, status: int, type: str, message: str, fields: list[dict[str, Any]] | None = None,
                 retry_after: float | None = None, request_id: str | None = None) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.fields = fields
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(status, type, message)

    def __str__(self) -> str:
        text = f"{self.status} {self.type}: {self.message}" if self.status else f"{self.type}: {self.message}"
        if self.fields:
            problems = "; ".join(_describe_field(f) for f in self.fields)
            text += f" ({problems})"
        if self.retry_after is not None:
            text += f"; retry after {self.retry_after:g} s"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return (f"ServeClientError(status={self.status!r}, type={self.type!r}, message={self.message!r}, "
                f"fields={self.fields!r}, retry_after={self.retry_after!r}, request_id={self.request_id!r})")


def _describe_field(problem: Mapping[str, Any]) -> str:
    text = f"{problem.get('field', '?')}: {problem.get('problem', 'invalid')}"
    if problem.get("expected"):
        text += f", expected {problem['expected']}"
    return text


@dataclass(frozen=True)
class Prediction:
    """A program's answer: ``outputs`` (the output fields by name; ``prediction["answer"]`` reads one), the
    ``program`` and ``version`` that answered, the A/B ``arm`` ("a" or "b"), token ``usage``, ``cost`` in USD (None
    when the model's price is unknown), whether it came from the cache, and the ``request_id``."""

    outputs: dict[str, Any]
    version: str | None = None
    arm: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    cache_hit: bool = False
    request_id: str | None = None
    program: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def get(self, name: str, default: Any = None) -> Any:
        """The output field ``name``, or ``default`` when the program has no such output."""
        return self.outputs.get(name, default)


@dataclass(frozen=True)
class StreamChunk:
    """A piece of an output ``field``'s text as the LM writes it, from the sub-module ``predictor``."""

    field: str
    text: str
    predictor: str | None = None


@dataclass(frozen=True)
class StreamStatus:
    """A progress message from the program (e.g. a tool being called)."""

    message: str


StreamEvent = StreamChunk | StreamStatus | Prediction
"""What :meth:`Client.stream` yields: chunks and status messages, then one :class:`Prediction`."""


@dataclass(frozen=True)
class ProgramInfo:
    """A served program as ``GET /v1/programs`` describes it: its URL ``name``, the ``version`` serving (and the
    ``versions`` of arms "a"/"b"), the registry ``stage`` it follows (None for a fixed version), the JSON Schemas
    of its inputs and outputs and its ``status`` (loading, ready, or why the last switch failed)."""

    name: str
    version: str | None
    stage: str | None
    versions: dict[str, str | None]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    status: Any = None


# ---------------------------------------------------------------------------------------------------------------
# decoding what the service sends (all of it is data: checked, never trusted)


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _prediction(body: Any, headers: Mapping[str, str] | None = None) -> Prediction:
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
        raise ServeClientError(0, "protocol_error", "the service's answer has no 'outputs' object",
                               request_id=_as_str(body.get("request_id")) if isinstance(body, dict) else None)
    headers = headers or {}
    usage = {k: v for k, v in _as_dict(body.get("usage")).items()
             if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
    cost = body.get("cost")
    return Prediction(
        outputs=dict(body["outputs"]),
        version=_as_str(body.get("version")) or headers.get("x-dspyo3-program-version"),
        arm=_as_str(body.get("arm")) or headers.get("x-dspyo3-arm"),
        usage=usage,
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        cache_hit=body.get("cache_hit") is True,
        request_id=_as_str(body.get("request_id")) or headers.get("x-request-id"),
        program=_as_str(body.get("program")),
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN -> None


def _error_from_object(payload: Any, *, status: int | None, retry_after: float | None = None,
                       request_id: str | None = None, secret: str | None = None) -> ServeClientError:
    """A :class:`ServeClientError` from an error body ``{"error": {...}, "request_id": ...}`` (or the inner
    object alone, as batch items carry it)."""
    outer = _as_dict(payload)
    error = _as_dict(outer.get("error")) if "error" in outer else outer
    type_ = _as_str(error.get("type")) or "http_error"
    message = _as_str(error.get("message")) or "the service gave no message"
    fields = error.get("fields")
    field_list = [dict(f) for f in fields if isinstance(f, dict)] if isinstance(fields, list) else None
    if status is None:
        explicit = error.get("status", outer.get("status"))
        if isinstance(explicit, int) and not isinstance(explicit, bool) and 100 <= explicit <= 599:
            status = explicit
        else:
            status = _STATUS_OF_TYPE.get(type_, 500)
    if retry_after is None:
        value = error.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            retry_after = float(value)
    request_id = _as_str(outer.get("request_id")) or _as_str(error.get("request_id")) or request_id
    return ServeClientError(status, type_, _mask(message, secret), field_list, retry_after, request_id)


def _error_from_response(status: int, reason: str, headers: Mapping[str, str], content: bytes,
                         secret: str | None) -> ServeClientError:
    """The error an HTTP response stands for; a body that is not a dspyo3 error object (a proxy's HTML page,
    plain text, broken JSON) still gives a clear message, never a decoding error."""
    retry_after = _retry_after(headers.get("retry-after"))
    request_id = headers.get("x-request-id")
    try:
        payload = json.loads(content) if content else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return _error_from_object(payload, status=status, retry_after=retry_after, request_id=request_id,
                                  secret=secret)
    content_type = headers.get("content-type", "").split(";")[0].strip() or "no content type"
    snippet = _snippet(content)
    message = f"HTTP {status} {reason}".rstrip() + f" with a {content_type} body, not a dspyo3 service error"
    if snippet:
        message += f": {snippet!r}"
    return ServeClientError(status, "http_error", _mask(message, secret), None, retry_after, request_id)


def _snippet(content: bytes) -> str:
    text = content[:4096].decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    text = re.sub(r"<[^>]*>", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


def _mask(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _program_info(entry: Any) -> ProgramInfo | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    versions = {k: (v if isinstance(v, str) else None) for k, v in _as_dict(entry.get("versions")).items()
                if isinstance(k, str)}
    return ProgramInfo(name=entry["name"], version=_as_str(entry.get("version")), stage=_as_str(entry.get("stage")),
                       versions=versions, input_schema=_as_dict(entry.get("input_schema")),
                       output_schema=_as_dict(entry.get("output_schema")), status=entry.get("status"))


def _batch_results(body: Any, headers: Mapping[str, str], secret: str | None,
                   expected: int) -> list[Prediction | ServeClientError]:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise ServeClientError(0, "protocol_error", "the service's batch answer has no 'results' list",
                               request_id=headers.get("x-request-id"))
    if len(results) != expected:
        raise ServeClientError(0, "protocol_error",
                               f"the service answered {len(results)} batch items for {expected} sent",
                               request_id=headers.get("x-request-id"))
    out: list[Prediction | ServeClientError] = []
    for item in results:
        if isinstance(item, dict) and item.get("ok") is True:
            merged = dict(item)
            merged.setdefault("program", body.get("program"))
            merged.setdefault("version", body.get("version"))
            out.append(_prediction(merged))
        else:
            out.append(_error_from_object(item.get("error") if isinstance(item, dict) else None, status=None,
                                          request_id=_as_str(body.get("request_id")), secret=secret))
    return out


class SSEDecoder:
    """Incremental ``text/event-stream`` decoding: feed bytes as they arrive, get ``(event, data)`` pairs.

    Follows the HTML Living Standard's rules: lines end in CRLF, LF or CR (also split across reads), a leading BOM
    is dropped, ``:`` lines are comments (keep-alives), several ``data:`` lines join with newlines, one space after
    the colon is dropped, an event without data is not dispatched, and an unterminated event at the end of the
    stream is discarded.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._first = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The events completed by ``chunk``."""
        text = self._decoder.decode(chunk)
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        self._buffer += text
        events: list[tuple[str, str]] = []
        start = 0
        buffer = self._buffer
        length = len(buffer)
        index = 0
        while index < length:
            char = buffer[index]
            if char == "\n" or char == "\r":
                line = buffer[start:index]
                if char == "\r":
                    if index + 1 < length:
                        if buffer[index + 1] == "\n":
                            index += 1
                    else:
                        self._pending_cr = True
                start = index + 1
                event = self._line(line)
                if event is not None:
                    events.append(event)
            index += 1
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # id and retry are not used by this client; unknown fields are ignored


def _stream_event(event: str, data: str, secret: str | None) -> StreamEvent | None:
    """A typed stream event; raises for an ``error`` event; None for events this client does not know."""
    if event not in ("chunk", "status", "prediction", "error"):
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        raise ServeClientError(0, "protocol_error", f"the service sent a {event} event that is not JSON") from None
    if event == "chunk":
        body = _as_dict(payload)
        return StreamChunk(field=_as_str(body.get("field")) or "", text=_as_str(body.get("text")) or "",
                           predictor=_as_str(body.get("predictor")))
    if event == "status":
        message = payload.get("message") if isinstance(payload, dict) else payload
        return StreamStatus(message=message if isinstance(message, str) else json.dumps(message))
    if event == "prediction":
        return _prediction(payload)
    raise _error_from_object(payload, status=None, secret=secret)


# ---------------------------------------------------------------------------------------------------------------
# the clients


def _program_path(name: str, suffix: str = "") -> str:
    if not name:
        raise ValueError("program name must not be empty")
    return f"/v1/programs/{quote(name, safe='')}{suffix}"


def _check_key(api_key: str | None) -> None:
    if api_key is not None and not _KEY_CHARS.fullmatch(api_key):
        # never echo the key: only what is wrong with it
        raise ValueError("api_key must be printable ASCII without spaces or line breaks")


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"user-agent": _USER_AGENT, "accept": "application/json"}
    headers.update(extra or {})
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _transport_error(exc: httpx.HTTPError, secret: str | None) -> ServeClientError:
    if isinstance(exc, httpx.TimeoutException):
        type_, what = "timeout", "the service did not answer in time"
    elif isinstance(exc, httpx.ConnectError):
        type_, what = "connection_error", "could not connect to the service"
    else:
        type_, what = "connection_error", "the connection to the service failed"
    detail = _mask(str(exc), secret)
    return ServeClientError(0, type_, f"{what} ({type(exc).__name__}: {detail})" if detail else what)


_NOT_JSON: Final = object()


def _json_body(response: httpx.Response, secret: str | None) -> Any:
    try:
        body = json.loads(response.content)
    except ValueError:
        body = _NOT_JSON
    if body is _NOT_JSON:  # raised outside the except block: no JSONDecodeError chained to the error
        raise _error_from_response(response.status_code, response.reason_phrase, response.headers,
                                   response.content, secret)
    return body


class _Base:
    _api_key: str | None
    base_url: str

    def __repr__(self) -> str:
        key = "***" if self._api_key is not None else None
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={key!r})"

    def _error(self, response: httpx.Response) -> ServeClientError:
        return _error_from_response(response.status_code, response.reason_phrase, response.headers,
                                    response.content, self._api_key)

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise self._error(response)


def _is_event_stream(response: httpx.Response) -> bool:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return response.status_code < 400 and media == "text/event-stream"


class Client(_Base):
    """A blocking client for a ``dspyo3 serve`` service at ``base_url``.

    ``api_key`` is sent as ``Authorization: Bearer`` (services with tenants need one), ``timeout`` is the seconds
    to wait for the connection and for each read (a stream's keep-alives count as reads), ``headers`` are added
    to every request. Connections are kept alive between calls; use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        _check_key(api_key)
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(api_key, headers),
                                  timeout=httpx.Timeout(timeout), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def _request(self, method: Literal["GET", "POST"], path: str, body: Any = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body) if body is not None else self._http.request(
                method, path)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self._api_key) from None

    def predict(self, name: str, /, **inputs: Any) -> Prediction:
        """Run program ``name`` on ``inputs`` (its input fields by name) and return its :class:`Prediction`."""
        response = self._request("POST", _program_path(name), inputs)
        self._raise_for(response)
        return _prediction(_json_body(response, self._api_key), response.headers)

    def stream(self, name: str, /, **inputs: Any) -> Iterator[StreamEvent]:
        """Run program ``name`` on ``inputs`` streaming: :class:`StreamChunk` and :class:`StreamStatus` events as
        the program produces them, then the final :class:`Prediction`. An ``error`` event raises
        :class:`ServeClientError`. Stopping the iteration early closes the connection (the service cancels the
        LM call)."""
        path = _program_path(name, "/stream")
        try:
            with self._http.stream("POST", path, json=inputs, headers={"accept": "text/event-stream"}) as response:
                if not _is_event_stream(response):
                    response.read()
                    raise self._error(response)
                decoder = SSEDecoder()
                for chunk in response.iter_bytes():
                    for event, data in decoder.feed(chunk):
                        item = _stream_event(event, data, self._api_key)
                        if item is None:
                            continue
                        yield item
                        if isinstance(item, Prediction):
                            return
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self._api_key) from None
        raise ServeClientError(0, "protocol_error", "the stream ended without a prediction")

    def batch(self, name: str, items: Iterable[Mapping[str, Any]]) -> list[Prediction | ServeClientError]:
        """Run program ``name`` on each of ``items`` in one request; one result per item, in order: its
        :class:`Prediction` or the :class:`ServeClientError` that item got (the others are still answered). A
        failure of the whole request (401, 413, too many items, ...) raises."""
        listed = [dict(item) for item in items]
        response = self._request("POST", _program_path(name, "/batch"), {"items": listed})
        self._raise_for(response)
        return _batch_results(_json_body(response, self._api_key), response.headers, self._api_key, len(listed))

    def programs(self) -> list[ProgramInfo]:
        """The programs the service serves, with their versions, stages and JSON Schemas."""
        response = self._request("GET", "/v1/programs")
        self._raise_for(response)
        body = _json_body(response, self._api_key)
        entries = body.get("programs") if isinstance(body, dict) else None
        return [info for info in map(_program_info, entries if isinstance(entries, list) else [])
                if info is not None]

    def health(self) -> bool:
        """Whether the service process is up (``GET /healthz`` answers 200); False when it cannot be reached."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> dict[str, Any]:
        """The service's readiness report (``GET /readyz``): answered when ready (200) and when not (503, with the
        reasons); any other failure raises :class:`ServeClientError`."""
        response = self._request("GET", "/readyz")
        if response.status_code not in (200, 503):
            self._raise_for(response)
        body = _json_body(response, self._api_key)
        if not isinstance(body, dict):
            raise ServeClientError(0, "protocol_error", "the readiness report is not a JSON object",
                                   request_id=response.headers.get("x-request-id"))
        return body


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited (``stream`` is an async iterator). Use it as
    ``async with AsyncClient(...) as client`` or call :meth:`aclose`."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        _check_key(api_key)
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(api_key, headers),
                                       timeout=httpx.Timeout(timeout), transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def close(self) -> None:
        """Same as :meth:`aclose`."""
        await self._http.aclose()

    async def _request(self, method: Literal["GET", "POST"], path: str, body: Any = None) -> httpx.Response:
        try:
            if body is not None:
                return await self._http.request(method, path, json=body)
            return await self._http.request(method, path)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self._api_key) from None

    async def predict(self, name: str, /, **inputs: Any) -> Prediction:
        """Run program ``name`` on ``inputs`` and return its :class:`Prediction`."""
        response = await self._request("POST", _program_path(name), inputs)
        self._raise_for(response)
        return _prediction(_json_body(response, self._api_key), response.headers)

    async def stream(self, name: str, /, **inputs: Any) -> AsyncIterator[StreamEvent]:
        """Like :meth:`Client.stream`, as an async iterator. Leaving the loop early closes the connection once the
        iterator is closed (``contextlib.aclosing`` closes it at once)."""
        path = _program_path(name, "/stream")
        try:
            async with self._http.stream("POST", path, json=inputs,
                                         headers={"accept": "text/event-stream"}) as response:
                if not _is_event_stream(response):
                    await response.aread()
                    raise self._error(response)
                decoder = SSEDecoder()
                async for chunk in response.aiter_bytes():
                    for event, data in decoder.feed(chunk):
                        item = _stream_event(event, data, self._api_key)
                        if item is None:
                            continue
                        yield item
                        if isinstance(item, Prediction):
                            return
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self._api_key) from None
        raise ServeClientError(0, "protocol_error", "the stream ended without a prediction")

    async def batch(self, name: str, items: Iterable[Mapping[str, Any]]) -> list[Prediction | ServeClientError]:
        """Like :meth:`Client.batch`."""
        listed = [dict(item) for item in items]
        response = await self._request("POST", _program_path(name, "/batch"), {"items": listed})
        self._raise_for(response)
        return _batch_results(_json_body(response, self._api_key), response.headers, self._api_key, len(listed))

    async def programs(self) -> list[ProgramInfo]:
        """Like :meth:`Client.programs`."""
        response = await self._request("GET", "/v1/programs")
        self._raise_for(response)
        body = _json_body(response, self._api_key)
        entries = body.get("programs") if isinstance(body, dict) else None
        return [info for info in map(_program_info, entries if isinstance(entries, list) else [])
                if info is not None]

    async def health(self) -> bool:
        """Like :meth:`Client.health`."""
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def ready(self) -> dict[str, Any]:
        """Like :meth:`Client.ready`."""
        response = await self._request("GET", "/readyz")
        if response.status_code not in (200, 503):
            self._raise_for(response)
        body = _json_body(response, self._api_key)
        if not isinstance(body, dict):
            raise ServeClientError(0, "protocol_error", "the readiness report is not a JSON object",
                                   request_id=response.headers.get("x-request-id"))
        return body

