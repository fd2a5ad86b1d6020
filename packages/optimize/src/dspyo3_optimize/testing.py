"""Offline stand-ins for optimizer runs: a loopback LM that answers GSM8K questions with a skill that depends on
the prompt, so optimizers have a real signal to find.

:class:`GSM8KResponder` plugs into :class:`dspyo3_core.testing.LMServer`. For a known question it answers the gold
number when ``stable_hash(question) % 10 < skill``, else a wrong number, where ``skill`` grows with what the prompt
carries: ``base`` (4) for a zero-shot prompt, +3 per demo (up to two) and +2 when the instructions say "step by
step". Every other request (instruction proposals, dataset summaries, ...) gets a generic answer in every output
field. Answers are deterministic per prompt, so a saved and reloaded program answers exactly as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from dspyo3_core.gsm8k import last_number
from dspyo3_core.testing.server import chat_reply, last_user_text, output_field_names, parse_fields

PROPOSAL = "Think step by step, then give only the final number as the answer."


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process."""
    return int(hashlib.sha256(text.strip().encode()).hexdigest()[:8], 16)


class GSM8KResponder:
    """Answers GSM8K questions (from ``examples``: ``dspy.Example`` or dicts with question/answer).

    Attributes:
        calls: requests answered for known questions.
        other_calls: requests answered generically.
    """

    def __init__(self, examples: Iterable[Any], base: int = 4, per_demo: int = 3, instruction_bonus: int = 2) -> None:
        self.gold: dict[str, str] = {}
        for example in examples:
            question = example["question"] if isinstance(example, dict) else example.question
            answer = example["answer"] if isinstance(example, dict) else example.answer
            self.gold[str(question).strip()] = last_number(answer) or str(answer)
        self.base = base
        self.per_demo = per_demo
        self.instruction_bonus = instruction_bonus
        self.calls = 0
        self.other_calls = 0

    def skill(self, request: dict[str, Any]) -> int:
        """How many tenths of the questions this prompt answers correctly."""
        messages = request.get("messages") or []
        demos = sum(1 for m in messages[:-1] if m.get("role") == "assistant")
        system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
        bonus = self.instruction_bonus if "step by step" in system.lower() else 0
        return self.base + self.per_demo * min(demos, 2) + bonus

    def __call__(self, request: dict[str, Any]) -> str:
        inputs = parse_fields(last_user_text(request))
        question = inputs.get("question", "").strip()
        names = output_field_names(request) or ["answer"]
        if question in self.gold:
            self.calls += 1
            gold = self.gold[question]
            correct = stable_hash(question) % 10 < self.skill(request)
            answer = gold if correct else str(int(float(gold)) + 1 if gold.lstrip("-").isdigit() else gold + "1")
            fields = {name: (answer if name == "answer" else "Let me compute it step by step.") for name in names}
            return chat_reply(**fields)
        self.other_calls += 1
        return chat_reply(**{name: PROPOSAL for name in names})
