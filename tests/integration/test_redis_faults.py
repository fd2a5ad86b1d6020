"""benchmarks/redis_faults.py in a small configuration: every Redis-backed part (cache, rate limiter, agent state,
registry) goes through a redis-server killed mid-run and restarted, with no failed call and no wrong answer, and
the cache and the limiter find Redis again. Behaviour only: the rates it measures are not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_redis_backed_part_survives_redis_being_killed(tmp_path: Path, redis_binary: str) -> None:
    del redis_binary  # only for the skip/fail decision: the benchmark starts its servers with that binary
    out = tmp_path / "faults.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "redis_faults.py"), "--outage", "1",
                          "--scale", "0.2", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result == json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("cache", "limiter", "limiter_sigstop", "agent_state", "registry"):
        figures = result[name]
        assert figures["calls"] > 0, name
        assert (figures["failed"], figures["wrong"]) == (0, 0), f"{name}: {figures['examples']}"
    assert result["cache"]["redis_rejoined"] and result["cache"]["provider_requests"] > 0
    for name in ("limiter", "limiter_sigstop"):
        assert result[name]["granted_locally"] > 0 and result[name]["outages"] == 1, name
        assert result[name]["redis_rejoined"], f"{name}: the limiter did not rejoin Redis after it came back"
    assert result["agent_state"]["acknowledged_after_restart"] > 0  # writes resumed once Redis was back
    assert result["registry"]["registered"] > 0
    assert result["ok"] is True
