"""Streaming a DSPy program: a typed async iterator over ``dspy.streamify`` (field chunks, status messages, retries,
the final prediction last), and SSE / WebSocket helpers for Starlette and FastAPI apps.

Retries are visible on the streaming path. DSPy retries a streaming LM call itself only until the first chunk is
out (it must not replay visible output), and DSPy issue #9459 reports streaming silently skipping ``num_retries``.
:func:`stream` applies a :class:`RetryPolicy` to the whole streamed call: a retryable failure yields a
:class:`Retry` event (with the chunks to discard, if some were already sent) and the call starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from dspyo3_async.retry import DEFAULT_RETRY, RetryPolicy

__all__ = ["Chunk", "Event", "Final", "Retry", "Status", "sse_response", "stream", "to_sse", "websocket_send"]


@dataclass(frozen=True)
class Chunk:
    """A piece of an output field: ``field`` of predictor ``predictor``; ``last`` on the field's final chunk."""

    field: str
    text: str
    predictor: str = ""
    last: bool = False


@dataclass(frozen=True)
class Status:
    """A status message from DSPy's status provider (e.g. a tool or module starting)."""

    message: str


@dataclass(frozen=True)
class Retry:
    """The call failed with a retryable error and starts again after ``delay`` seconds; ``discard`` chunks already
    delivered belong to the failed attempt."""

    attempt: int
    error: str
    delay: float
    discard: int


@dataclass(frozen=True)
class Final:
    """The final ``dspy.Prediction``; always the last event of a successful stream."""

    prediction: Any


Event = Chunk | Status | Retry | Final


def _output_fields(program: Any) -> list[str]:
    names: list[str] = []
    for _, predictor in program.named_predictors():
        names.extend(name for name in predictor.signature.output_fields if name not in names)
    return names


def stream(program: Any, *, fields: Sequence[str] | None = None, retries: RetryPolicy | int = DEFAULT_RETRY,
           status: bool = True, **inputs: Any) -> AsyncIterator[Event]:
    """Run ``program`` (a DSPy module) with ``inputs`` and yield its events as they happen.

    Args:
        fields: output fields to stream (default: every output field of every predictor).
        retries: a :class:`RetryPolicy` or a number of retries for retryable LM errors (see the module docstring).
        status: include DSPy's status messages.

    Yields :class:`Chunk`, :class:`Status` and :class:`Retry` events, then exactly one :class:`Final`. A
    non-retryable error (or the last attempt's) is raised. Closing the iterator early cancels the call.
    The ``dspy.context`` active when ``stream`` is called holds for the whole stream, even when it is iterated
    later (as Starlette does after the endpoint returned its response).
    """
    from dspy.dsp.utils.settings import thread_local_overrides

    return _stream(dict(thread_local_overrides.get()), program, fields, retries, status, inputs)


async def _stream(overrides: dict[str, Any], program: Any, fields: Sequence[str] | None,
                  retries: RetryPolicy | int, status: bool, inputs: dict[str, Any]) -> AsyncIterator[Event]:
    import dspy

    with dspy.context(**overrides):
        async with contextlib.aclosing(_attempts(program, fields, retries, status, inputs)) as events:  # type: ignore[type-var]
            async for event in events:
                yield event


async def _attempts(program: Any, fields: Sequence[str] | None, retries: RetryPolicy | int, status: bool,
                    inputs: dict[str, Any]) -> AsyncIterator[Event]:
    import dspy
    from dspy.streaming import StatusMessage, StreamListener, StreamResponse

    policy = RetryPolicy.of(retries)
    names = list(fields) if fields is not None else _output_fields(program)
    attempt = 0
    while True:
        attempt += 1
        listeners = [StreamListener(signature_field_name=name) for name in names]
        streaming = dspy.streamify(program, stream_listeners=listeners, is_async_program=True,
                                   async_streaming=True)
        sent = 0
        final = None
        events = streaming(**inputs)
        try:
            async for item in events:  # consumed to its end, so streamify's task group closes where it opened
                if isinstance(item, StreamResponse):
                    sent += 1
                    yield Chunk(item.signature_field_name, item.chunk, item.predict_name,
                                bool(getattr(item, "is_last_chunk", False)))
                elif isinstance(item, StatusMessage):
                    if status:
                        yield Status(item.message)
                elif isinstance(item, dspy.Prediction):
                    final = item
            if final is None:
                raise RuntimeError("dspy.streamify ended without a final prediction")
            yield Final(final)
            return
        except Exception as exc:
            if not policy.should_retry(exc, attempt):
                raise
            delay = policy.delay(exc, attempt)
            yield Retry(attempt, f"{type(exc).__name__}: {exc}", delay, sent)
            await asyncio.sleep(delay)
        finally:
            await events.aclose()


def _event_json(event: Event) -> dict[str, Any]:
    if isinstance(event, Chunk):
        return {"type": "chunk", "field": event.field, "text": event.text, "predictor": event.predictor,
                "last": event.last}
    if isinstance(event, Status):
        return {"type": "status", "message": event.message}
    if isinstance(event, Retry):
        return {"type": "retry", "attempt": event.attempt, "error": event.error, "delay": event.delay,
                "discard": event.discard}
    prediction = event.prediction
    values = dict(prediction.items()) if hasattr(prediction, "items") else {"output": prediction}
    return {"type": "final", "prediction": json.loads(json.dumps(values, default=str))}


async def to_sse(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """Server-Sent Events text: one ``event: <type>`` / ``data: <json>`` block per event, then ``event: error``
    with the message if the stream fails (the client sees why instead of a cut connection)."""
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                payload = _event_json(event)
                yield f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
    except Exception as exc:
        yield f"event: error\ndata: {json.dumps({'type': 'error', 'error': f'{type(exc).__name__}: {exc}'})}\n\n"


def sse_response(events: AsyncIterator[Event]) -> Any:
    """A Starlette/FastAPI ``StreamingResponse`` (``text/event-stream``) of :func:`to_sse`; needs
    ``dspyo3-async[web]`` (starlette). When the client disconnects, Starlette stops the iterator, which cancels
    the program's call."""
    try:
        from starlette.responses import StreamingResponse
    except ImportError:
        from dspyo3_core.failures import install_advice

        raise ImportError(f"sse_response needs starlette: {install_advice('dspyo3-async', 'web')}") from None
    return StreamingResponse(to_sse(events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def websocket_send(websocket: Any, events: AsyncIterator[Event]) -> None:
    """Send each event as a JSON message over a Starlette/FastAPI WebSocket (``{"type": "chunk", ...}``, ...,
    ``{"type": "final", ...}``, or ``{"type": "error", ...}`` if the stream fails)."""
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                await websocket.send_json(_event_json(event))
    except Exception as exc:
        with contextlib.suppress(Exception):
            await websocket.send_json({"type": "error", "error": f"{type(exc).__name__}: {exc}"})
