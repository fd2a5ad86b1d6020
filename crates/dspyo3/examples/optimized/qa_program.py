"""The program of the `optimized` example: its architecture lives here, in Python; the state an optimizer finds
(demos, instructions) is saved as JSON and loaded from Rust with `Program::load(path, "qa_program:QAProgram")`."""

import dspy


class QA(dspy.Signature):
    """Answer questions with short factoid answers."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="often between 1 and 5 words")


class QAProgram(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.ChainOfThought(QA)

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)
