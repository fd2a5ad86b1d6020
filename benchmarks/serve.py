"""`dspyo3 serve` against DSPy's deployment-tutorial app (FastAPI + ``dspy.asyncify`` on uvicorn) under load.

Three kinds of process: the loopback LM server (``python -m dspyo3_core.testing --latency L``, every answer after
``--latency-ms``), the server under test (its own process group: ``dspyo3 serve`` with 1 or 2 workers, or the
tutorial app ``serve_tutorial_app.py`` on ``uvicorn --workers N``), and the load generator (this script with
``--loadgen``: ``--clients`` asyncio clients, each on its own HTTP/1.1 keep-alive connection, sending one request
after the other with a unique question, so no cache answers). Both contenders serve the same program
(``serve_program.py``: ``Predict("question -> answer")``, or ``--program cot`` for two ``ChainOfThought`` steps)
with the same LM class per row: ``dspy.LM`` (LiteLLM) or dspyo3's ``NativeLM``.

Each row: start the server, wait until it answers, ``--warmup`` s of load, then ``--seconds`` s measured:
requests/s (answers completed in the window), p50/p99 latency, server CPU per request (user + system time of
every process in the server's process group over the window, from /proc, divided by the answers) and failed
requests (non-200, an answer without the output field, a connection error or a timeout, warm-up included). Rows
with ``_half`` in the name run at half the clients (half the LM limit) for the p99 target, ``_quarter`` rows at a
quarter (a load one worker serves on this 2-core machine without saturating its core); ``dspyo3_native_cb``
runs with ``[production] module_callbacks = true`` (the DSPy callback measuring modules, off by default in
``dspyo3 serve``) to show that cost. The tutorial app runs as the tutorial writes it (``async_max_workers=4``:
at most 4 programs at once, 40 requests/s at 100 ms whatever the server) and, in ``tutorial_tuned`` rows, with
a thread per client (``async_max_workers=256``), the strongest version of that design.
Granian rows serve dspyo3's app through ``granian --interface asgi`` instead of uvicorn (1 worker), to choose the
default server.

    python benchmarks/serve.py [--seconds 30] [--clients 256] [--latency-ms 100] [--program predict|cot]
                               [--rows dspyo3,tutorial,...] [--profile FILE] [--json F] [--plot F]

The LM limit is clients / (latency x LM calls per request): 2,560 req/s for 256 clients at 100 ms. Targets:
dspyo3 >= 2x the tutorial app's requests/s at the same worker count, p99 <= latency + 25 ms at half the limit,
0 failed. Last stdout line: ``{"limit_rps", "rps": {"dspyo3", "dspyo3_2w", "tutorial", "tutorial_2w",
"dspyo3_native", ...}, "p50_ms", "p99_ms", "cpu_us_per_request", "failed": {same keys}, "ratio", "targets",
...}``. ``--profile PREFIX`` runs each 1-worker uvicorn dspyo3 row's server under cProfile (PREFIX.ROW gets the stats,
stderr the top functions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, LMServerProcess, emit, log

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    key: str
    app: str  # "dspyo3" | "tutorial"
    lm: str  # "dspy" | "native"
    workers: int
    server: str = "uvicorn"  # "uvicorn" | "granian" (dspyo3 only)
    half: bool = False  # half the clients
    quarter: bool = False  # a quarter of the clients: a load one process serves without saturating this machine
    toml: str = ""  # a dspyo3.toml for this row's server (DSPYO3_CONFIG)
    threads: int | None = None  # tutorial: dspy.settings.async_max_workers (None: 4, as the tutorial sets it)


ROWS = [
    Row("dspyo3", "dspyo3", "dspy", 1),
    Row("tutorial", "tutorial", "dspy", 1),
    Row("tutorial_tuned", "tutorial", "dspy", 1, threads=256),
    Row("dspyo3_2w", "dspyo3", "dspy", 2),
    Row("tutorial_2w", "tutorial", "dspy", 2),
    Row("tutorial_tuned_2w", "tutorial", "dspy", 2, threads=256),
    Row("dspyo3_native", "dspyo3", "native", 1),
    Row("tutorial_native", "tutorial", "native", 1),
    Row("tutorial_tuned_native", "tutorial", "native", 1, threads=256),
    Row("dspyo3_native_2w", "dspyo3", "native", 2),
    Row("tutorial_native_2w", "tutorial", "native", 2),
    Row("tutorial_tuned_native_2w", "tutorial", "native", 2, threads=256),
    Row("dspyo3_granian", "dspyo3", "dspy", 1, server="granian"),
    Row("dspyo3_native_granian", "dspyo3", "native", 1, server="granian"),
    Row("dspyo3_native_cb", "dspyo3", "native", 1, toml="[production]\nmodule_callbacks = true\n"),
    Row("dspyo3_half", "dspyo3", "dspy", 1, half=True),
    Row("dspyo3_native_half", "dspyo3", "native", 1, half=True),
    Row("tutorial_tuned_half", "tutorial", "dspy", 1, half=True, threads=256),
    Row("dspyo3_native_quarter", "dspyo3", "native", 1, quarter=True),
    Row("dspyo3_native_2w_quarter", "dspyo3", "native", 2, quarter=True),
    Row("tutorial_tuned_native_quarter", "tutorial", "native", 1, quarter=True, threads=256),
]


# ---------------------------------------------------------------------------------------------- load generator

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: status, body, whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if "chunked" in headers.get("transfer-encoding", ""):
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(part[:-2] for part in parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection") == "close"


async def _load(host: str, port: int, path: str, field: str, clients: int, warmup: float, seconds: float,
                timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_at, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    failures: dict[str, int] = {}
    answered = 0

    def fail(kind: str) -> None:
        failures[kind] = failures.get(kind, 0) + 1

    async def client(idx: int) -> None:
        nonlocal answered
        writer: asyncio.StreamWriter | None = None
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                "Content-Length: ").encode()
        n = 0
        while loop.time() < stop_at:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    fail("connect")
                    await asyncio.sleep(0.05)
                    continue
            n += 1
            body = json.dumps({field: f"question {idx}-{n}"}).encode()
            sent = time.perf_counter()
            try:
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                async with asyncio.timeout(timeout):
                    status, answer, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
                fail(type(exc).__name__)
                writer.close()
                writer = None
                continue
            done = time.perf_counter()
            if status != 200:
                fail(f"http_{status}")
            elif b'"answer"' not in answer:
                fail("no_answer")
            else:
                answered += 1
                if measure_at <= loop.time() < stop_at:
                    latencies.append(done - sent)
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    cpu = [0.0, 0.0]

    async def clock() -> None:
        await asyncio.sleep(max(0.0, measure_at - loop.time()))
        print("measure", flush=True)
        cpu[0] = time.process_time()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        print("done", flush=True)
        cpu[1] = time.process_time()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await clock()
    # requests in flight at the end finish (or time out) and are counted; nothing is cut off
    await asyncio.gather(*tasks)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"requests": len(latencies), "rps": len(latencies) / seconds, "p50_ms": pct(0.50), "p90_ms": pct(0.90),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "answered_total": answered, "failed": sum(failures.values()), "failures": failures,
            "loadgen_cpu_cores": (cpu[1] - cpu[0]) / seconds}


def loadgen(args: argparse.Namespace) -> None:
    """The load generator process: prints ``measure`` and ``done`` at the window's edges, then the JSON."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, port = args.target.rsplit(":", 1)
    result = asyncio.run(_load(host, int(port), args.path, args.field, args.clients, args.warmup, args.seconds,
                               args.timeout))
    print(json.dumps(result), flush=True)


# -------------------------------------------------------------------------------------------------- servers

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_cpu(pgid: int) -> tuple[float, int]:
    """User + system CPU seconds of every live process in process group ``pgid``, and how many there are."""
    tick = os.sysconf("SC_CLK_TCK")
    total, count = 0, 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
            count += 1
    return total / tick, count


def _pid_cpu(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


_PROFILED_UVICORN = """
import cProfile, sys, time
import uvicorn.main
out = sys.argv.pop(1)
profiler = cProfile.Profile(time.thread_time)
try:
    profiler.runcall(uvicorn.main.main, sys.argv[1:], standalone_mode=False)
finally:
    profiler.dump_stats(out)
"""


def _dspyo3_cli() -> bool:
    """Whether the ``dspyo3 serve`` command exists in this environment."""
    try:
        import dspyo3_production.serve.cli  # noqa: F401
    except ImportError:
        return False
    return True


def _app_factory() -> bool:
    try:
        from dspyo3_production.serve import app
    except ImportError:
        return False
    return hasattr(app, "app_from_environment")


def server_command(row: Row, port: int, program: str, profile: str | None, max_in_flight: int,
                   launcher: str = "cli") -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that start ``row``'s server on ``port``."""
    env = {"DSPYO3_BENCH_LM": row.lm, "DSPYO3_BENCH_PROGRAM": program,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    common = ["--host", "127.0.0.1", "--port", str(port)]
    if row.app == "tutorial":
        env["DSPYO3_BENCH_ASYNC_MAX_WORKERS"] = str(row.threads or 4)
        return ([str(BIN / "uvicorn"), "serve_tutorial_app:app", *common, "--workers", str(row.workers),
                 "--no-access-log", "--log-level", "warning"], env)
    target = f"serve_program:{program}"
    if row.server == "uvicorn" and launcher == "cli" and _dspyo3_cli() and not profile:
        return ([str(BIN / "dspyo3"), "serve", target, *common, "--workers", str(row.workers), "--max-in-flight",
                 str(max_in_flight)], env)
    if not _app_factory():
        raise RuntimeError("neither `dspyo3 serve` nor dspyo3_production.serve.app:app_from_environment exists yet")
    from dspyo3_production.serve.app import config_to_env
    from dspyo3_production.serve.config import ProgramConfig, ServeConfig

    config = ServeConfig(programs=(ProgramConfig(target),), host="127.0.0.1", port=port, workers=row.workers,
                         max_in_flight=max_in_flight)
    env.update(config_to_env(config))
    factory = "dspyo3_production.serve.app:app_from_environment"
    if row.server == "granian":
        return ([sys.executable, "-m", "granian", "--interface", "asgi", "--factory", factory, *common,
                 "--workers", str(row.workers), "--no-access-log", "--log-level", "warning"], env)
    # profiled: the event loop thread's CPU time (time.thread_time), not wall time, which on a shared machine
    # counts the time the thread waited for a core or the GIL
    prefix = [sys.executable, "-c", _PROFILED_UVICORN, profile] if profile else [sys.executable, "-m", "uvicorn"]
    return ([*prefix, "--factory", factory, *common, "--workers", str(row.workers), "--no-access-log",
             "--log-level", "warning"], env)


class Server:
    """A server under test in a process group of its own; stopped (TERM, then KILL) on exit."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        # workers of a supervisor that died first still belong to the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.log.close()


def wait_ready(server: Server, port: int, path: str, field: str, limit: float = 120.0) -> None:
    """Until the server answers one request with 200 and an answer (or raise with its log's tail)."""
    import httpx

    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            response = httpx.post(f"http://127.0.0.1:{port}{path}", json={field: "ready?"}, timeout=10)
            if response.status_code == 200 and "answer" in response.text:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {limit:g} s ({last}):\n{server.tail()}")


def run_row(row: Row, args: argparse.Namespace, api_base: str, lm_pid: int, workdir: Path) -> dict[str, Any]:
    """Start ``row``'s server, load it, stop it; its figures."""
    port = _free_port()
    program = args.program
    path, field = ("/predict", "text") if row.app == "tutorial" else (f"/v1/programs/{program}", "question")
    profile = f"{args.profile}.{row.key}" if args.profile and row.app == "dspyo3" and row.workers == 1 \
        and row.server == "uvicorn" else None
    command, env = server_command(row, port, program, profile, args.max_in_flight or args.clients, args.launcher)
    env["DSPYO3_BENCH_API_BASE"] = api_base
    if row.toml:
        (workdir / f"{row.key}.toml").write_text(row.toml)
        env["DSPYO3_CONFIG"] = str(workdir / f"{row.key}.toml")
    clients = args.clients // 2 if row.half else args.clients // 4 if row.quarter else args.clients
    # uvicorn re-raises SIGTERM after its shutdown, which would end cProfile before it writes; SIGINT's
    # KeyboardInterrupt lets it write
    server = Server(command, env, workdir / f"{row.key}.log", workdir,
                    signal.SIGINT if profile else signal.SIGTERM)
    try:
        wait_ready(server, port, path, field)
        load = subprocess.Popen(
            [sys.executable, __file__, "--loadgen", "--target", f"127.0.0.1:{port}", "--path", path, "--field",
             field, "--clients", str(clients), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
             "--timeout", str(args.timeout)], stdout=subprocess.PIPE, text=True)
        try:
            assert load.stdout is not None
            marks: dict[str, tuple[float, int, float, float]] = {}
            for line in load.stdout:
                if line.strip() in {"measure", "done"}:
                    cpu, processes = _group_cpu(server.proc.pid)
                    marks[line.strip()] = (cpu, processes, _pid_cpu(lm_pid), time.monotonic())
                else:
                    figures: dict[str, Any] = json.loads(line)
            if load.wait() != 0 or set(marks) != {"measure", "done"}:
                raise RuntimeError(f"the load generator failed (exit {load.returncode})")
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
    finally:
        server.stop()
    (cpu0, _, lm0, t0), (cpu1, processes, lm1, t1) = marks["measure"], marks["done"]
    requests = max(1, figures["requests"])
    figures.update(clients=clients, workers=row.workers, lm=row.lm, app=row.app, server=row.server, half=row.half,
                   quarter=row.quarter,
                   server_processes=processes, cpu_us_per_request=(cpu1 - cpu0) / requests * 1e6,
                   server_cpu_cores=(cpu1 - cpu0) / (t1 - t0), lm_server_cpu_cores=(lm1 - lm0) / (t1 - t0),
                   limit_rps=clients / (args.latency_ms / 1000 * _lm_calls(program)), loadavg=os.getloadavg()[0])
    return figures


def _lm_calls(program: str) -> int:
    return 2 if program == "cot" else 1


# --------------------------------------------------------------------------------------------------- report

def plot(rows: dict[str, dict[str, Any]], limit: float, path: str, title: str) -> None:
    """Requests/s per row (the LM limit marked) and latency (p50 to p99) against requests/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rows)
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 0.35 * len(keys) + 2.5))
    colours = ["#c0504d" if rows[k]["app"] == "dspyo3" else "#4f81bd" for k in keys]
    bars.barh(keys, [rows[k]["rps"] for k in keys], color=colours)
    bars.axvline(limit, color="grey", linestyle="--", label=f"LM limit {limit:,.0f} req/s")
    for y, key in enumerate(keys):
        bars.text(rows[key]["rps"], y, f" {rows[key]['rps']:,.0f}", va="center", fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("requests/s")
    bars.legend(loc="lower right", fontsize=8)
    for key, colour in zip(keys, colours, strict=True):
        r = rows[key]
        scatter.plot([r["rps"], r["rps"]], [r["p50_ms"], r["p99_ms"]], color=colour, marker="_")
        scatter.scatter([r["rps"]], [r["p99_ms"]], color=colour, s=18)
        scatter.annotate(key, (r["rps"], r["p99_ms"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    scatter.set_xlabel("requests/s")
    scatter.set_ylabel("latency ms (p50 to p99)")
    scatter.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summarize(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The JSON result: per-metric maps over the rows, ratios and targets."""
    limit = args.clients / (args.latency_ms / 1000 * _lm_calls(args.program))
    result: dict[str, Any] = {"limit_rps": limit}
    for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "failed"):
        result[metric] = {key: round(figures[metric], 1) for key, figures in rows.items()}
    ratio, tuned = {}, {}
    for key in rows:
        if rows[key]["app"] != "dspyo3" or rows[key]["server"] != "uvicorn" or key.endswith("_cb"):
            continue
        anchor = key.replace("dspyo3", "tutorial")
        if anchor in rows:
            ratio[key] = round(rows[key]["rps"] / rows[anchor]["rps"], 2)
        anchor = key.replace("dspyo3", "tutorial_tuned")
        if anchor in rows:
            tuned[key] = round(rows[key]["rps"] / rows[anchor]["rps"], 2)
    result["ratio_vs_tutorial"] = ratio  # the tutorial as written: async_max_workers=4
    result["ratio_vs_tutorial_tuned"] = tuned  # the tutorial with a thread per client (async_max_workers=256)
    # on a machine shared with other work, requests/s follow the CPU share a server gets; tutorial CPU / dspyo3 CPU
    # per request is how many times the requests dspyo3 serves on the same CPU
    result["cpu_ratio_vs_tutorial_tuned"] = {
        key: round(rows[key.replace("dspyo3", "tutorial_tuned")]["cpu_us_per_request"]
                   / rows[key]["cpu_us_per_request"], 2)
        for key in tuned}
    p99_target = args.latency_ms * _lm_calls(args.program) + 25
    targets: dict[str, Any] = {f"{key}_2x": value >= 2 for key, value in ratio.items()}
    targets.update({f"{key}_2x_vs_tuned": value >= 2 for key, value in tuned.items()})
    targets.update({f"{key}_p99_le_{p99_target:g}ms": rows[key]["p99_ms"] <= p99_target
                    for key in rows if (rows[key]["half"] or rows[key]["quarter"]) and rows[key]["app"] == "dspyo3"})
    targets["zero_failed"] = all(figures["failed"] == 0 for figures in rows.values())
    result["targets"] = targets
    result["half_limit_rps"] = limit / 2
    result["rows"] = {key: {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
                      for key, figures in rows.items()}
    result.update(seconds=args.seconds, warmup=args.warmup, clients=args.clients, latency_ms=args.latency_ms,
                  max_in_flight=args.max_in_flight or args.clients,
                  program=args.program, cores=os.cpu_count(), loadavg=os.getloadavg()[0],
                  commit=args.commit, date=args.started)
    return result


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout.strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per row (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--clients", type=int, default=256, help="concurrent keep-alive clients (default 256)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="LM latency (default 100)")
    parser.add_argument("--program", choices=["predict", "cot"], default="predict")
    parser.add_argument("--rows", help=f"comma-separated subset of {','.join(r.key for r in ROWS)}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as failed")
    parser.add_argument("--max-in-flight", type=int, help="dspyo3's requests running at once per worker "
                        "(default: --clients, as the tutorial app's thread limit)")
    parser.add_argument("--launcher", choices=["cli", "factory"], default="cli",
                        help="start dspyo3's uvicorn rows with `dspyo3 serve` (default) or `uvicorn --factory "
                        "dspyo3_production.serve.app:app_from_environment` (what the command runs)")
    parser.add_argument("--profile", help="run 1-worker dspyo3 rows under cProfile, stats to PREFIX.ROW")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--plot", dest="plot_path", help="latency/throughput chart (PNG)")
    for hidden in ("--target", "--path", "--field"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen(args)
        return
    rows = ROWS
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - {r.key for r in ROWS}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; choose from {[r.key for r in ROWS]}")
        rows = [r for r in ROWS if r.key in wanted]
    if args.profile:
        args.profile = str(Path(args.profile).resolve())

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    args.commit, args.started = _commit(), time.strftime("%Y-%m-%d %H:%M %Z")  # what was measured: the start's
    figures: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dspyo3-bench-serve-") as tmp, \
            LMServerProcess(args.latency_ms / 1000) as lm_server:
        for row in rows:
            clients = args.clients // 2 if row.half else args.clients // 4 if row.quarter else args.clients
            log(f"{row.key}: {row.app}, {row.lm} LM, {row.workers} worker(s), {row.server}, {clients} clients, "
                f"{args.warmup:g}+{args.seconds:g} s")
            try:
                figures[row.key] = run_row(row, args, lm_server.api_base, lm_server.proc.pid, Path(tmp))
            except RuntimeError as exc:  # one broken contender does not lose the other rows
                log(f"{row.key}: FAILED: {exc}")
                errors[row.key] = str(exc).splitlines()[-1]
                continue
            f = figures[row.key]
            log(f"{row.key}: {f['rps']:,.0f} req/s, p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
                f"{f['cpu_us_per_request']:,.0f} us server CPU/request ({f['server_cpu_cores']:.2f} cores), "
                f"LM server {f['lm_server_cpu_cores']:.2f} cores, failed {f['failed']} {f['failures'] or ''}")
    if args.profile:
        import pstats

        for key in figures:
            if Path(f"{args.profile}.{key}").exists():
                print(f"--- cProfile of {key}'s server ({args.profile}.{key}) ---", file=sys.stderr)
                stats = pstats.Stats(f"{args.profile}.{key}", stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(40)
    result = summarize(figures, args)
    result["launcher"] = args.launcher
    if errors:
        result["errors"] = errors
    if args.plot_path and figures:
        plot(figures, result["limit_rps"], args.plot_path,
             f"{args.program}, {args.clients} clients, {args.latency_ms:g} ms LM latency, {args.seconds:g} s per row")
    emit(result, args.json_path, None)


if __name__ == "__main__":
    main()
