"""Few-shot programs over the offline LM: answers follow the demos' format, values still come from the prompt."""

from __future__ import annotations

from typing import Any

import dspy
import pytest

from dspyo3_core.gsm8k import exact_number
from dspyo3_core.offline import OFFLINE_LABEL, OfflineLM, offline_answer

ADAPTERS = [dspy.ChatAdapter(), dspy.JSONAdapter()]
IDS = ["chat", "json"]


def _few_shot(*demos: dict[str, str]) -> Any:
    program = dspy.ChainOfThought("question -> answer")
    program.predict.demos = [dspy.Example(**demo) for demo in demos]
    return program


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_bare_integer_demos_give_a_bare_integer(adapter: Any) -> None:
    program = _few_shot({"question": "Tom has 3 apples and buys 4. How many now?", "reasoning": "3 + 4 = 7",
                         "answer": "7"},
                        {"question": "A box holds 12 eggs. How many in 10 boxes?", "answer": "120"})
    question = "Ann reads 20 pages a day. How many pages does she read in 30 days?"
    with dspy.context(lm=OfflineLM(), adapter=adapter):
        result = program(question=question)
    assert result.answer == "30"  # the question's number, written as the demos write theirs
    assert result.reasoning == OFFLINE_LABEL  # still labelled: no model reasoned
    with dspy.context(lm=OfflineLM(), adapter=adapter):  # the same program without demos copies a sentence
        assert dspy.ChainOfThought("question -> answer")(question=question).answer == question


@pytest.mark.parametrize("adapter", ADAPTERS, ids=IDS)
def test_affixes_decimals_and_separators_follow_the_demos(adapter: Any) -> None:
    program = _few_shot({"question": "Price of 2 pens at 1.25?", "answer": "$2.50"},
                        {"question": "Price of 1000 clips at 1.10?", "answer": "$1,100.00"})
    with dspy.context(lm=OfflineLM(), adapter=adapter):
        assert program(question="What do 4 tickets cost at 1250?").answer == "$1,250.00"


def test_a_closed_label_set_is_echoed() -> None:
    program = dspy.Predict("text -> label")
    program.demos = [dspy.Example(text="great film, loved it", label="positive"),
                     dspy.Example(text="dull and too long", label="negative"),
                     dspy.Example(text="loved the cast", label="positive")]
    with dspy.context(lm=OfflineLM()):
        # no label word in the text: the first label seen (ties never invent a new label)
        assert program(text="the music was fine").label == "positive"
        assert program(text="a negative review, honestly").label == "negative"


def test_free_text_demos_leave_the_answer_extractive() -> None:
    program = _few_shot({"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote it."},
                        {"question": "Where is Rome?", "answer": "Rome is in Italy."})
    with dspy.context(lm=OfflineLM()):
        assert program(question="Which river runs through Paris?").answer == "Which river runs through Paris?"


def test_evaluation_scores_only_what_the_prompt_holds() -> None:
    """A GSM8K-style evaluation of a few-shot program: the one answer that is a number of its question scores."""
    program = _few_shot({"question": "Sam has 5 pens and gives away 2. How many are left?", "answer": "3"},
                        {"question": "Each of 4 bags holds 6 balls. How many balls?", "answer": "24"})
    devset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in [
        ("A pie needs 6 eggs and Kim has exactly 6. How many eggs go in the pie?", "6"),  # the last number: right
        ("Mia buys 3 packs of 8 stickers. How many stickers?", "24"),  # needs arithmetic: wrong
        ("A train goes 60 miles an hour for 2 hours. How far?", "120"),  # needs arithmetic: wrong
    ]]
    with dspy.context(lm=OfflineLM()):
        result = dspy.Evaluate(devset=devset, metric=exact_number, display_progress=False)(program)
        answers = [program(question=example.question).answer for example in devset]
    assert answers == ["6", "8", "2"]  # bare integers like the demos, each copied from its question
    assert round(float(result.score), 2) == 33.33


def test_demos_in_a_raw_chat_history() -> None:
    system = "Your output fields are:\n1. `answer` (str):\nAll interactions\n[[ ## answer ## ]]\n{answer}\n"
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "[[ ## question ## ]]\n2 + 2?"},
                {"role": "assistant", "content": "[[ ## answer ## ]]\n4 units\n\n[[ ## completed ## ]]"},
                {"role": "user", "content": "[[ ## question ## ]]\nHow long is 15 times 2?"}]
    assert offline_answer(messages) == "[[ ## answer ## ]]\n2 units\n\n[[ ## completed ## ]]"
