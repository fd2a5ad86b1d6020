"""The span facade: W3C traceparent reading and writing, remote parents, and the off switch."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from dspyo3_core import spans

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_traceparent_round_trips() -> None:
    ref = spans.parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert ref == spans.SpanRef(int(TRACE, 16), int(SPAN, 16), True, remote=True)
    assert spans.format_traceparent(ref) == f"00-{TRACE}-{SPAN}-01"
    assert spans.format_traceparent(ref, span_id=0xABC) == f"00-{TRACE}-0000000000000abc-01"


def test_the_sampled_flag_is_bit_zero() -> None:
    assert spans.parse_traceparent(f"00-{TRACE}-{SPAN}-00").sampled is False  # type: ignore[union-attr]
    assert spans.parse_traceparent(f"00-{TRACE}-{SPAN}-03").sampled is True  # type: ignore[union-attr]
    unsampled = spans.SpanRef(1, 2, False)
    assert spans.format_traceparent(unsampled).endswith("-00")


def test_a_later_version_may_carry_more_fields() -> None:
    assert spans.parse_traceparent(f"01-{TRACE}-{SPAN}-01-extra") is not None
    assert spans.parse_traceparent(f" 00-{TRACE}-{SPAN}-01\t") is not None  # optional white space around


@pytest.mark.parametrize("text", [
    None, "", "garbage", f"00-{TRACE}-{SPAN}", f"00-{TRACE.upper()}-{SPAN}-01", f"ff-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{SPAN}-01-extra", f"00-{TRACE}x-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-0g", "00-" + "a" * 600, b"\xff\xfe", f"0-{TRACE}-{SPAN}-01",
])
def test_anything_else_is_ignored(text: str | bytes | None) -> None:
    assert spans.parse_traceparent(text) is None


def test_bytes_headers_are_read() -> None:
    assert spans.parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode()) is not None


def test_remote_parent_is_current_inside_the_block_only() -> None:
    assert spans.CURRENT.get() is None
    with spans.remote_parent(f"00-{TRACE}-{SPAN}-01") as ref:
        assert spans.CURRENT.get() == ref
        assert spans.current_ids() == (TRACE, SPAN)
    assert spans.CURRENT.get() is None
    assert spans.current_ids() is None


def test_an_invalid_remote_parent_changes_nothing() -> None:
    outer = spans.SpanRef(5, 6, True)
    token = spans.CURRENT.set(outer)
    try:
        with spans.remote_parent("not a traceparent") as ref:
            assert ref is None
            assert spans.CURRENT.get() == outer
    finally:
        spans.CURRENT.reset(token)


def test_the_current_span_follows_tasks_and_copied_contexts_but_not_bare_threads() -> None:
    seen: dict[str, object] = {}

    async def main() -> None:
        with spans.remote_parent(f"00-{TRACE}-{SPAN}-01") as ref:
            seen["task"] = await asyncio.create_task(_current())
            seen["to_thread"] = await asyncio.to_thread(spans.CURRENT.get)
            seen["ref"] = ref

    async def _current() -> object:
        return spans.CURRENT.get()

    asyncio.run(main())
    assert seen["task"] == seen["ref"] == seen["to_thread"]

    with spans.remote_parent(f"00-{TRACE}-{SPAN}-01") as ref:
        got: dict[str, object] = {}
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=lambda: got.update(copied=ctx.run(spans.CURRENT.get)))
        bare = threading.Thread(target=lambda: got.update(bare=spans.CURRENT.get()))
        for thread in (copied, bare):
            thread.start()
            thread.join()
    assert got == {"copied": ref, "bare": None}


def test_install_sets_and_clears_the_tracer() -> None:
    class Dummy:
        capture_content = False
        propagate = True

    assert spans.TRACER is None
    spans.install(Dummy())  # type: ignore[arg-type]
    try:
        assert isinstance(spans.TRACER, Dummy)
    finally:
        spans.install(None)
    assert spans.TRACER is None
