"""Fixtures for dspyo3-agents: a small tool registry, a loopback LM server whose answers follow the ReAct
protocol (decided from the prompt, so any process and any number of concurrent agents can use it), and a
``dspy.LM`` on it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest

from dspyo3_agents import ToolRegistry
from dspyo3_core.testing.server import LMServer, chat_reply, last_user_text, output_field_names, parse_fields

Decide = Callable[[dict[str, str]], dict[str, Any]]


def observations(fields: dict[str, str]) -> list[str]:
    """The observations of the trajectory so far, in step order (from a ReAct prompt's fields)."""
    found = sorted((int(k.split("_")[1]), v) for k, v in fields.items() if re.fullmatch(r"observation_\d+", k))
    return [v for _, v in found]


def react_responder(decide: Decide, answer: Callable[[dict[str, str]], str]) -> Callable[[dict[str, Any]], str]:
    """A responder for ReAct prompts: ``decide(fields)`` returns the next step (``thought``, ``tool``, ``args``)
    for the step prompt; ``answer(fields)`` the final answer for the extract prompt."""

    def respond(request: dict[str, Any]) -> str:
        fields = parse_fields(last_user_text(request))
        if "next_tool_name" in output_field_names(request):
            step = decide(fields)
            return chat_reply(next_thought=step.get("thought", "thinking"), next_tool_name=step["tool"],
                              next_tool_args=json.dumps(step.get("args", {})))
        return chat_reply(reasoning="from the observations", answer=answer(fields))

    return respond


def lm_on(server: LMServer) -> dspy.LM:
    """A real ``dspy.LM`` (LiteLLM, HTTP) on the loopback server, no cache, no retries."""
    return dspy.LM("openai/test-model", api_base=server.api_base, api_key="test", cache=False, num_retries=0)


@pytest.fixture
def registry() -> ToolRegistry:
    """``add`` and ``multiply`` (math), ``shout`` (text)."""
    reg = ToolRegistry()

    @reg.tool(tags=["math"])
    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: the first addend.
            b: the second addend.
        """
        return a + b

    @reg.tool(tags=["math"])
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    @reg.tool(tags=["text"])
    async def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    return reg


@pytest.fixture
def lm_server() -> Iterator[LMServer]:
    with LMServer() as server:
        yield server
