"""Ready-made programs for the examples and tests (import paths usable in run configs)."""

from __future__ import annotations

from typing import Any


def gsm8k_program() -> Any:
    """``dspy.ChainOfThought("question -> answer")``: the usual GSM8K baseline."""
    import dspy

    return dspy.ChainOfThought("question -> answer")


def qa_program() -> Any:
    """``dspy.Predict("question -> answer")``."""
    import dspy

    return dspy.Predict("question -> answer")
