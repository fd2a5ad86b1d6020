"""Optimize QAProgram with BootstrapFewShot against an LM server, save it, and record its predictions.

    python optimize.py --api-base http://127.0.0.1:PORT/v1 --out DIR

Writes DIR/program.json (the optimized state) and DIR/predictions.json (answers to QUESTIONS from Python), which
the Rust side compares with its own answers after `Program::load`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from qa_program import QAProgram

TRAIN = [
    ("What is the capital of France?", "Paris"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What is 2 + 2?", "4"),
    ("What is the largest planet?", "Jupiter"),
    ("What gas do plants absorb?", "Carbon dioxide"),
]
QUESTIONS = ["What is the capital of Italy?", "Who painted the Mona Lisa?", "How many legs does a spider have?"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    lm = dspy.LM("openai/dspyo3-test", api_base=args.api_base, api_key="dspyo3-loopback", cache=False)
    dspy.configure(lm=lm)

    trainset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in TRAIN]
    optimizer = dspy.BootstrapFewShot(metric=lambda example, pred, trace=None: True, max_bootstrapped_demos=3,
                                      max_labeled_demos=2)
    program = optimizer.compile(QAProgram(), trainset=trainset)
    args.out.mkdir(parents=True, exist_ok=True)
    program.save(str(args.out / "program.json"))

    predictions = {q: program(question=q).answer for q in QUESTIONS}
    baseline = {q: QAProgram()(question=q).answer for q in QUESTIONS}
    (args.out / "predictions.json").write_text(json.dumps({"optimized": predictions, "unoptimized": baseline},
                                                          indent=2))
    demos = len(program.answer.predict.demos)
    print(f"optimized with {demos} demos; saved {args.out / 'program.json'}")


if __name__ == "__main__":
    main()
