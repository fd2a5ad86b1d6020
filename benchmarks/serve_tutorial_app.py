"""DSPy's deployment-tutorial app, the anchor of `benchmarks/serve.py`: FastAPI, a pydantic request model, the
program wrapped once with ``dspy.asyncify`` and awaited per request, served by uvicorn.

Written from the tutorial's description ("Tutorial: Deploying your DSPy program", FastAPI section): configure the
LM with ``dspy.configure``, ``dspy.asyncify(program)``, one ``POST /predict`` taking ``{"text": ...}`` and
answering ``{"status": "success", "data": prediction.toDict()}``, 500 with the error text on failure.

The program and LM are the ones dspyo3's contender serves (:mod:`serve_program`, LM from the environment). The
tutorial sets ``async_max_workers=4`` (threads running programs at once), which caps the app at 40 requests/s at
100 ms latency whatever the server does; ``DSPYO3_BENCH_ASYNC_MAX_WORKERS`` (default 4, as written) sets it, and
the benchmark's ``tutorial_tuned`` rows give it a thread per client.

    DSPYO3_BENCH_API_BASE=http://127.0.0.1:PORT/v1 uvicorn serve_tutorial_app:app --app-dir benchmarks
"""

from __future__ import annotations

import os

import dspy
import serve_program
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI(title="DSPy Program API", description="A simple API serving a DSPy program", version="1.0.0")


class Question(BaseModel):
    """The request body: the question's text."""

    text: str


dspy.configure(lm=serve_program.bench_lm(), async_max_workers=int(os.environ.get("DSPYO3_BENCH_ASYNC_MAX_WORKERS",
                                                                                   "4")))
dspy_program = dspy.asyncify(getattr(serve_program, os.environ.get("DSPYO3_BENCH_PROGRAM", "predict")))


@app.post("/predict")
async def predict(question: Question) -> dict[str, object]:
    """Run the program on the question; the prediction's fields as ``data``."""
    try:
        result = await dspy_program(question=question.text)
        return {"status": "success", "data": result.toDict()}
    except Exception as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from exc
