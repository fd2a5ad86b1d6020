"""Fixtures for dspyo3-optimize: a GSM8K subset from $DSPYO3_DATA_DIR, a loopback LM that answers it with a
prompt-dependent skill (dspyo3_optimize.testing.GSM8KResponder), and a dspy.LM on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_core.testing.server import LMServer
from dspyo3_optimize.data import load_examples
from dspyo3_optimize.testing import GSM8KResponder

DATA_DIR = Path(os.environ.get("DSPYO3_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.jsonl"
GSM8K_TEST = DATA_DIR / "gsm8k" / "test.jsonl"


def gsm8k_run_toml(name: str, *, limit: int, dev_size: int, trials: list[tuple[str, int, int]]) -> str:
    """An ``optimize.toml`` for the GSM8K example program on ``GSM8K_TRAIN``: one concurrent call, out_dir
    ``run``, and one ``bootstrap_fewshot`` trial per ``(name, max_bootstrapped_demos, max_labeled_demos)``."""
    text = (f'[run]\nname = "{name}"\nprogram = "dspyo3_optimize.examples:gsm8k_program"\nmetric = "gsm8k"\n'
            f'out_dir = "run"\nconcurrency = 1\n\n[data]\npath = "{GSM8K_TRAIN}"\npreset = "gsm8k"\n'
            f"limit = {limit}\ndev_size = {dev_size}\n")
    for trial, bootstrapped, labeled in trials:
        text += (f'\n[[trials]]\nname = "{trial}"\noptimizer = "bootstrap_fewshot"\n'
                 f"options = {{ max_bootstrapped_demos = {bootstrapped}, max_labeled_demos = {labeled} }}\n")
    return text


@pytest.fixture(scope="session")
def gsm8k_train() -> list[Any]:
    """The first 40 GSM8K training questions."""
    assert GSM8K_TRAIN.is_file(), f"GSM8K is missing at {GSM8K_TRAIN}; set DSPYO3_DATA_DIR"
    return load_examples(GSM8K_TRAIN, preset="gsm8k", limit=40)


@pytest.fixture(scope="session")
def gsm8k_test() -> list[Any]:
    """The first 30 GSM8K test questions."""
    return load_examples(GSM8K_TEST, preset="gsm8k", limit=30)


@pytest.fixture
def responder(gsm8k_train: list[Any], gsm8k_test: list[Any]) -> GSM8KResponder:
    return GSM8KResponder([*gsm8k_train, *gsm8k_test])


@pytest.fixture
def gsm8k_server(responder: GSM8KResponder) -> Iterator[LMServer]:
    with LMServer(responder) as server:
        yield server


@pytest.fixture
def gsm8k_lm(gsm8k_server: LMServer) -> Any:
    return dspy.LM("openai/gsm8k-sim", api_base=gsm8k_server.api_base, api_key="test", cache=False, num_retries=0)


@pytest.fixture
def lm_env(cli_env: dict[str, str], gsm8k_server: LMServer) -> dict[str, str]:
    """Environment for a ``dspyo3`` subprocess whose default LM profile is the loopback server."""
    env = dict(cli_env)
    env["DSPY_CACHEDIR"] = str(Path(cli_env["DSPYO3_CACHE_DIR"]) / "dspy")  # no answers from other tests' runs
    env.update(DSPYO3_LM="openai-compatible/gsm8k-sim", DSPYO3_LM_API_BASE=gsm8k_server.api_base,
               DSPYO3_LM_API_KEY="test")
    return env
