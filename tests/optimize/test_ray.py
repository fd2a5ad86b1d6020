"""The Ray executor (``executor = "ray"``): a real local Ray instance on this machine (Ray 2.x has no local_mode
any more), its workers calling the loopback LM; scores and predictions equal the local executor's."""

from __future__ import annotations

from typing import Any

import pytest

from dspyo3_core.testing.services import in_ci
from dspyo3_optimize import RayExecutor, evaluate
from dspyo3_optimize.examples import gsm8k_program


def test_ray_executor_matches_local(gsm8k_test: list[Any], gsm8k_lm: Any) -> None:
    try:
        import ray
    except ImportError:
        if in_ci():
            pytest.fail("Ray is not installed; CI must install dspyo3-optimize[ray] (ray>=2.40)")
        pytest.skip("pip install 'dspyo3-optimize[ray]'")
    examples = gsm8k_test[:10]
    local = evaluate(gsm8k_program(), examples, "gsm8k", lm=gsm8k_lm)
    executor = RayExecutor(chunks=2, init_kwargs={"num_cpus": 1})
    try:
        remote = evaluate(gsm8k_program(), examples, "gsm8k", lm=gsm8k_lm, executor=executor)
        assert ray.is_initialized()
    finally:
        executor.shutdown()
    assert not ray.is_initialized()
    assert remote.scores == local.scores and remote.predictions == local.predictions
    assert remote.errors == [None] * 10 and 0 < remote.mean < 1
