"""What the async tests share: a QA signature and an LM on the loopback server."""

from __future__ import annotations

from typing import Any

import dspy

from dspyo3_core.testing.server import LMServer


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def lm_for(server: LMServer, **kwargs: Any) -> dspy.LM:
    """``dspy.LM`` on ``server``: cache off and no retries inside the LM, so the code under test sees every
    attempt."""
    return dspy.LM("openai/dspyo3-test", api_base=server.api_base, api_key="sk-test", cache=False,
                   num_retries=0, **kwargs)
