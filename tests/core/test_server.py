"""The loopback LM server's fault injection, exercised through a real dspy.LM -> LiteLLM -> HTTP."""

from __future__ import annotations

import json
import time
import urllib.request

import dspy
import pytest

from dspyo3_core import HookedLM, PluginManager
from dspyo3_core.testing import LMServer, Reply, chat_reply, parse_fields


def make_lm(server: LMServer, manager: PluginManager, **kwargs: object) -> HookedLM:
    options: dict[str, object] = {"cache": False, "num_retries": 0, "engine": "litellm"}
    options.update(kwargs)
    return HookedLM("openai/dspyo3-test", api_base=server.api_base, api_key="sk-test", plugin_manager=manager,
                    **options)


def test_plain_completion(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script("hello there")
    assert make_lm(lm_server, plugin_manager)("hi") == ["hello there"]
    request = lm_server.requests[0]
    assert request["model"] == "dspyo3-test"
    assert request["messages"][-1] == {"role": "user", "content": "hi"}
    assert request["_headers"]["authorization"] == "Bearer sk-test"


def test_rate_limit_with_retry_after_is_retried(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script(Reply.rate_limited(retry_after=0.2), "after the 429")
    lm = make_lm(lm_server, plugin_manager, num_retries=2)
    assert lm("hi") == ["after the 429"]
    assert len(lm_server.requests) == 2


def test_rate_limit_without_retries_raises(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script(Reply.rate_limited(retry_after=5))
    with pytest.raises(Exception, match=r"(?i)rate limit"):
        make_lm(lm_server, plugin_manager)("hi")


def test_server_error_raises(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script(Reply.server_error(500, "scripted failure"))
    with pytest.raises(Exception, match="scripted failure"):
        make_lm(lm_server, plugin_manager)("hi")


def test_hang_drives_a_client_timeout(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    from dspy.utils.exceptions import LMTimeoutError

    lm_server.script(Reply.hang_up(60))  # the server would close the connection (not a timeout) after 60 s
    with pytest.raises(LMTimeoutError, match=r"(?i)timed out"):
        make_lm(lm_server, plugin_manager, timeout=0.5)("hi")
    assert len(lm_server.requests) == 1  # the one request, given up on by the client, not retried


def test_malformed_body_raises(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    from dspy.utils.exceptions import LMError

    lm_server.script(Reply.malformed())
    with pytest.raises(LMError, match="Expecting value"):  # the JSON decoder's complaint about the body
        make_lm(lm_server, plugin_manager)("hi")
    assert len(lm_server.requests) == 1


def test_latency_is_applied(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script(Reply.text("slow", latency=0.3))
    started = time.perf_counter()
    make_lm(lm_server, plugin_manager)("hi")
    assert time.perf_counter() - started >= 0.3


def test_sse_stream_on_the_wire(lm_server: LMServer) -> None:
    lm_server.script(Reply(content="abcdefghij", chunk_size=3))
    body = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(lm_server.api_base + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "abcdefghij"
    assert chunks[-1]["usage"]["completion_tokens"] == 1


def test_litellm_streaming(lm_server: LMServer) -> None:
    import litellm

    lm_server.script(Reply(content="streamed words here", chunk_size=4))
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in litellm.completion(model="openai/m", api_base=lm_server.api_base, api_key="k", stream=True,
                                        messages=[{"role": "user", "content": "x"}])
    ]
    assert "".join(pieces) == "streamed words here"
    assert len([p for p in pieces if p]) == 5


def test_models_endpoint(lm_server: LMServer) -> None:
    with urllib.request.urlopen(lm_server.api_base + "/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == "dspyo3-test"


def test_empty_script_fails_fast_with_a_clear_message(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    with pytest.raises(Exception, match="no scripted reply left"):
        make_lm(lm_server, plugin_manager)("hi")


def test_chat_reply_round_trips_through_parse_fields() -> None:
    text = chat_reply(answer="42", reasoning="because")
    assert parse_fields(text) == {"answer": "42", "reasoning": "because"}


def test_predict_with_n_candidates(lm_server: LMServer, plugin_manager: PluginManager) -> None:
    lm_server.script(chat_reply(answer="same"))
    with dspy.context(lm=make_lm(lm_server, plugin_manager)):
        prediction = dspy.Predict("question -> answer", n=3)(question="q")
    assert [c.answer for c in prediction.completions] == ["same"] * 3


def test_ipv6_loopback() -> None:
    with LMServer(host="::1") as server:
        server.script("v6")
        with urllib.request.urlopen(server.api_base + "/models", timeout=5) as response:
            assert response.status == 200
        assert server.url.startswith("http://[::1]:")


def test_server_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        LMServer(host="0.0.0.0")
