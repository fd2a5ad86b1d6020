"""``dspyo3 serve --ray``: the same app as a Ray Serve application on a local Ray instance, two replicas answering
one client's stream of requests (each response names its replica in ``x-dspyo3-replica``), stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from dspyo3_core.testing.server import LMServer, digest_responder
from dspyo3_core.testing.services import free_port, in_ci

PROGRAM_MODULE = '''
import dspy


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def build():
    return dspy.Predict(QA)
'''

LM_LATENCY = 2.0  # long enough for a wave of 16 requests to reach the LM before the first answer

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


@pytest.fixture
def ray_serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        if in_ci():
            pytest.fail("Ray Serve is not installed; CI must install ray[serve]>=2.40")
        pytest.skip("pip install 'ray[serve]'")
    return serve


@pytest.fixture
def lm() -> Iterator[LMServer]:
    with LMServer(digest_responder(latency=LM_LATENCY)) as server:
        yield server


def test_two_ray_serve_replicas_answer_one_client(ray_serve: Any, tmp_path: Path, cli_env: dict[str, str],
                                                 dspyo3_exe: str, lm: LMServer) -> None:
    module = f"served_ray_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PROGRAM_MODULE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**cli_env, "DSPYO3_LM": "openai/gpt-4o-mini", "DSPYO3_LM_API_BASE": lm.api_base,
           "DSPYO3_LM_API_KEY": "sk-test-abcdefghijklmnop",
           "RAY_ADDRESS": "local",  # a Ray instance of its own, never one another process started on this machine
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("DSPYO3_REDIS_URL", None)
    process = subprocess.Popen([dspyo3_exe, "serve", "--ray", "--replicas", "2", "--port", str(port),
                                f"qa={module}:build"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):  # Ray starts, then both replicas load DSPy and the program
            if process.poll() is not None:
                _, stderr = process.communicate()
                pytest.fail(f"dspyo3 serve --ray exited with {process.returncode}: {stderr[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=5.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("dspyo3 serve --ray did not become ready")

        run = uuid.uuid4().hex
        reached_lm_before_first_answer: list[int] = []

        def ask(i: int) -> httpx.Response:
            response = client.post("/v1/programs/qa", json={"question": f"question {i} of {run}"})
            reached_lm_before_first_answer.append(len(lm.requests))
            return response

        with httpx.Client(base_url=base, timeout=60.0,
                          limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(ask, range(32)))
        assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses if r.status_code != 200]
        # Ray Serve's own limit (5 requests per replica by default) is lifted to the app's bounds: all 16 requests
        # of the first wave reached the LM before the first answer came back
        assert reached_lm_before_first_answer[0] >= 16, reached_lm_before_first_answer
        assert all(r.json()["program"] == "qa" and r.json()["version"] == "local" for r in responses)
        replicas = {r.headers["x-dspyo3-replica"] for r in responses}
        assert len(replicas) == 2, replicas

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=180) == 0
        _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr[-3000:]
        assert [line for line in stderr.splitlines() if "listening on" in line] == [
            f"dspyo3 serve: Ray Serve (2 replicas) listening on {base}"]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
