"""Per-LM-call cost of tracing: dspyo3's OpenTelemetry spans off and on, against openinference-instrumentation-dspy.

One program, ``dspy.Predict("question -> answer")``, over ``free_engine.FreeEngine(0)`` (an engine that answers at
once with a valid ChatAdapter reply), so what differs between sides is only the tracing work. Every call has a new
question (a cache miss and a store: the common path) and, on the production sides, runs under a root span
(``tracing.span``, as ``dspyo3 serve`` and ``run_many`` open one; a no-op while tracing is off), so ``on`` records
the root, the inferred predictor, the LM call and its cache lookup; ``--no-root`` calls the program bare. Sides:

* **base**: ``HookedLM`` with the full ``dspyo3-production`` stack (as ``overhead.py``'s stack side), no tracing;
* **off**: the same stack with ``TracingConfig(enabled=False)`` (what every user without tracing runs);
* **on**: the same stack with ``TracingConfig(enabled=True, sample_ratio=1.0)``, the default export path: dspyo3's
  recorder and the native span sink (``encoder="native"``: batching, OTLP/protobuf encoding and the HTTP post in
  Rust, off the GIL) to a real collector (Arize Phoenix, started here through ``dspyo3_core.testing.phoenix``
  unless ``--endpoint`` names one);
* **on_sdk** (detail line): the same spans through the OpenTelemetry SDK's ``BatchSpanProcessor`` and OTLP/HTTP
  exporter (``encoder="sdk"``), to the same collector;
* **oi_base**: a plain ``dspy.LM`` with DSPy's memory cache, no instrumentation;
* **openinference**: the same plain ``dspy.LM`` with ``DSPyInstrumentor().instrument(tracer_provider=...)`` (an SDK
  ``TracerProvider`` with its ``BatchSpanProcessor`` and OTLP/HTTP exporter to the same collector), instrumented
  around each of its rounds only. It is measured against its own baseline with the LM class it instruments:
  ``HookedLM`` overrides ``LM.__call__``, which would hide openinference's LLM span.

Short rounds alternate the sides in a rotating order, each opened by a few untimed calls (the first calls after a
switch of side pay for the switch), the garbage collector paused while timing; each figure is
the **median of paired differences** (a side's round minus its baseline's round of the same turn, so slow drifts of
a shared VM cancel). Process CPU per call (``time.process_time``, which includes the batch processor's thread that
encodes and posts spans, flushed at the end of each round) goes on the detail line beside the quartiles: the wall
figures leave the flush out (it happens between rounds, as a batch processor's export happens between requests),
the CPU figures include it. Spans per call are counted by a counting
exporter in front of each side's OTLP exporter, after a final flush; the run fails if ``on`` exported a number of
spans that is not the same whole number per call in every round (then the tracer was not on the path).

Until ``dspyo3_production.tracing`` exists, ``off`` and ``on`` are reported as ``null`` with the reason on the
detail line. Targets to read the figures against (not asserted): off < 1 us, on < 25 us per call.

Run: ``hatch run bench-tracing [--calls N] [--rounds R] [--endpoint URL] [--json out.json] [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, output_args
from free_engine import FreeEngine

MODEL = "openai/gpt-4o-mini"


class CountingExporter:
    """A ``SpanExporter`` that counts the spans it passes on to ``inner`` (the OTLP exporter)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def export(self, spans: Sequence[Any]) -> Any:
        self.count += len(spans)
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def tracing_module() -> tuple[Any, str | None]:
    """``dspyo3_production.tracing`` and None, or None and why it cannot be used."""
    try:
        from dspyo3_production import tracing
    except ImportError as exc:
        return None, f"dspyo3_production.tracing is not available ({exc})"
    if not hasattr(tracing, "TracingConfig"):
        return None, "dspyo3_production.tracing has no TracingConfig"
    return tracing, None


def otlp_exporter(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, timeout=10)


def build(endpoint: str, project: str, callbacks: bool = False) -> dict[str, Any]:
    """Every side's LM, program and production stack (see the module docstring)."""
    import dspy
    from prometheus_client import CollectorRegistry

    import dspyo3_production as prod
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.plugins import PluginManager
    from dspyo3_production.metrics import Metrics

    warnings.simplefilter("ignore")
    devnull = open("/dev/null", "w")  # noqa: SIM115 - lives for the whole run
    prod.configure_logging(devnull, redact_root=False)
    prod.stack._loaded_from_settings = True  # no [production] config is read behind our back
    manager = PluginManager()

    def stack(tracing: Any = None) -> Any:
        metrics = Metrics(CollectorRegistry())
        kwargs: dict[str, Any] = {} if tracing is None else {"tracing": tracing}
        return prod.Production(cache=prod.TieredCache(metrics=metrics), metrics=metrics, log_events=True,
                               breaker=prod.CircuitBreaker(), budgets=[prod.Budget(1e9, per="day")], **kwargs)

    env: dict[str, Any] = {
        "dspy": dspy, "prod": prod,
        "program": dspy.Predict("question -> answer"),
        "stack_lm": HookedLM(MODEL, engine=FreeEngine(0.0), cache=True, num_retries=0, plugin_manager=manager),
        "bare_lm": dspy.LM(MODEL, engine=FreeEngine(0.0), cache=True, num_retries=0),
        "bare_cache": dspy.clients.Cache(False, True, None),
        "base": stack(),
        "reasons": {},
        "counters": {},
    }
    tracing, reason = tracing_module()
    if tracing is None:
        env["reasons"]["off"] = env["reasons"]["on"] = reason
    else:
        env["off"] = stack(tracing.TracingConfig(enabled=False))
        # the default export path: the native span sink when dspyo3-native has it (counted by its own stats)
        env["on"] = stack(tracing.TracingConfig(
            enabled=True, endpoint=endpoint, protocol="http/protobuf", sample_ratio=1.0,
            service_name="dspyo3-bench-tracing", resource={"openinference.project.name": f"{project}-dspyo3"}))
        sink = getattr(env["on"].tracer, "_sink", None)
        if sink is not None:
            # spans handed to the sink (what the tracer recorded; a collector that refuses a batch under load
            # changes what arrives, reported on the detail line, not what was recorded)
            env["counters"]["on"] = lambda: int(sink.stats()["queued"])
            env["sink"] = sink
            env["encoder"] = "native"
            # the same spans through the OpenTelemetry SDK's batch processor and OTLP/HTTP exporter
            env["on_sdk_exporter"] = CountingExporter(otlp_exporter(endpoint))
            env["on_sdk"] = stack(tracing.TracingConfig(
                enabled=True, endpoint=endpoint, protocol="http/protobuf", sample_ratio=1.0, encoder="sdk",
                service_name="dspyo3-bench-tracing", resource={"openinference.project.name": f"{project}-sdk"},
                exporter=env["on_sdk_exporter"]))
            env["counters"]["on_sdk"] = lambda: env["on_sdk_exporter"].count
        else:  # a dspyo3-native without the sink: the SDK's exporter is the default path
            env["on_exporter"] = CountingExporter(otlp_exporter(endpoint))
            env["on"] = stack(tracing.TracingConfig(
                enabled=True, endpoint=endpoint, protocol="http/protobuf", sample_ratio=1.0,
                service_name="dspyo3-bench-tracing", resource={"openinference.project.name": f"{project}-dspyo3"},
                exporter=env["on_exporter"]))
            env["counters"]["on"] = lambda: env["on_exporter"].count
            env["encoder"] = "sdk"
        if callbacks:
            env["on_callbacks_exporter"] = CountingExporter(otlp_exporter(endpoint))
            env["counters"]["on_callbacks"] = lambda: env["on_callbacks_exporter"].count
            env["on_callbacks"] = stack(tracing.TracingConfig(
                enabled=True, endpoint=endpoint, protocol="http/protobuf", sample_ratio=1.0, modules="callbacks",
                service_name="dspyo3-bench-tracing", resource={"openinference.project.name": f"{project}-callbacks"},
                exporter=env["on_callbacks_exporter"]))
    try:
        from openinference.instrumentation.dspy import DSPyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        env["reasons"]["openinference"] = f"openinference-instrumentation-dspy is not installed ({exc})"
    else:
        env["oi_exporter"] = CountingExporter(otlp_exporter(endpoint))
        provider = TracerProvider(resource=Resource.create({"service.name": "dspyo3-bench-openinference",
                                                            "openinference.project.name": f"{project}-oi"}))
        provider.add_span_processor(BatchSpanProcessor(env["oi_exporter"]))
        env["oi_provider"], env["instrumentor"] = provider, DSPyInstrumentor()
    return env


def flush_tracer() -> None:
    """Export what the installed dspyo3 tracer still holds."""
    from dspyo3_core import spans

    tracer = spans.TRACER
    flush = getattr(tracer, "force_flush", None)
    if callable(flush):
        flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="program calls per round and side")
    parser.add_argument("--rounds", type=int, default=200, help="rounds per side")
    parser.add_argument("--endpoint", help="an OTLP/HTTP traces endpoint (default: start Arize Phoenix on loopback)")
    parser.add_argument("--callbacks", action="store_true",
                        help='also measure tracing on with modules="callbacks" (exact module spans from a DSPy '
                             "callback), reported on the detail line")
    parser.add_argument("--no-root", dest="root", action="store_false",
                        help="call the program bare instead of under a root span (each LM call is then a trace of "
                             "its own, with no module spans)")
    output_args(parser)
    args = parser.parse_args()
    if args.calls < 10 or args.rounds < 10:
        parser.error("use at least --calls 10 and --rounds 10 (fewer gives noise, not a figure)")

    phoenix = None
    endpoint = args.endpoint
    if endpoint is None:
        from dspyo3_core.testing.phoenix import PhoenixProcess

        log("starting Arize Phoenix on loopback (10-30 s)")
        phoenix = PhoenixProcess().start()
        endpoint = phoenix.otlp_http
    try:
        run(args, endpoint)
    finally:
        if phoenix is not None:
            phoenix.close()


def run(args: argparse.Namespace, endpoint: str) -> None:
    project = f"bench-tracing-{uuid.uuid4().hex[:8]}"
    env = build(endpoint, project, callbacks=args.callbacks)
    if "on" not in env:
        args.root = False  # no tracer: nothing to open a root with
    dspy, program = env["dspy"], env["program"]
    stacks = [name for name in ("base", "off", "on", "on_sdk", "on_callbacks") if name in env]
    counter = iter(range(10**9))

    warm = max(3, args.calls // 10)  # untimed calls that open each round (see below)
    per_round = args.calls + warm

    def timed(call: Callable[[str], Any]) -> tuple[float, float]:
        # A side's first calls after another side ran pay for the switch (DSPy classes re-patched by
        # openinference's uninstrument, the interpreter re-specialising, another dspy.cache): without these
        # untimed calls that cost lands on whichever side always follows openinference in the rotation.
        for _ in range(warm):
            call(f"question {next(counter)}")
        questions = [f"question {next(counter)}" for _ in range(args.calls)]
        gc.collect()
        gc.disable()  # as timeit does: the collector's pauses would land on whichever side happens to trigger them
        try:
            cpu, started = time.process_time(), time.perf_counter()
            for question in questions:
                call(question)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            return wall / args.calls * 1e6, cpu / args.calls * 1e6
        finally:
            gc.enable()

    tracing, _ = tracing_module()

    def rooted(question: str) -> Any:
        """One program call under a root span, as serve and run_many give it (a no-op when tracing is off)."""
        with tracing.span("dspyo3.program bench"):
            return program(question=question)

    def stack_round(name: str) -> tuple[float, float]:
        production = env[name]
        production.install()
        try:
            with dspy.context(lm=env["stack_lm"]):
                wall_us, cpu_us = timed(rooted if args.root else (lambda q: program(question=q)))
            if name.startswith("on"):  # the round's spans leave now; their encoding and export count on this side's CPU
                cpu_us += flushed_cpu_us(flush_tracer)
            return wall_us, cpu_us
        finally:
            production.uninstall()
            env["prod"].stack._loaded_from_settings = True

    def flushed_cpu_us(flush: Callable[[], Any]) -> float:
        started = time.process_time()
        flush()
        return float((time.process_time() - started) / per_round * 1e6)  # the flush holds every call's spans

    def bare_round(instrument: bool) -> tuple[float, float]:
        dspy.cache = env["bare_cache"]
        if instrument:
            env["instrumentor"].instrument(tracer_provider=env["oi_provider"])
        try:
            with dspy.context(lm=env["bare_lm"], callbacks=[]):
                wall_us, cpu_us = timed(lambda q: program(question=q))
            if instrument:
                cpu_us += flushed_cpu_us(env["oi_provider"].force_flush)
            return wall_us, cpu_us
        finally:
            if instrument:
                env["instrumentor"].uninstrument()

    sides: dict[str, Callable[[], tuple[float, float]]] = {name: functools.partial(stack_round, name)
                                                           for name in stacks}
    sides["oi_base"] = functools.partial(bare_round, False)
    if "instrumentor" in env:
        sides["openinference"] = functools.partial(bare_round, True)

    for side in sides.values():  # warm up: imports, pricing table, first-time paths, the collector's project
        side()
    counters = env["counters"]
    if "oi_exporter" in env:
        counters["openinference"] = lambda: env["oi_exporter"].count
    counts_before = {name: count() for name, count in counters.items()}
    on_counts: list[int] = []
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(" / ".join(order) + " rounds", total=args.rounds)
        for i in range(args.rounds):
            shift = i % len(order)  # rotate which side goes first, so none always runs on a warmer cache
            for name in order[shift:] + order[:shift]:
                before = counters["on"]() if name == "on" else 0
                w, c = sides[name]()
                wall[name].append(w)
                cpu[name].append(c)
                if name == "on":
                    on_counts.append(counters["on"]() - before)
            progress.advance(task)
    if "oi_provider" in env:
        env["oi_provider"].force_flush()
    logging.shutdown()

    calls = args.rounds * per_round
    spans_per_call: dict[str, float | None] = {"off": None, "on": None, "openinference": None}
    if "on" in env:
        spans_per_call["off"] = 0.0  # nothing is recorded when off: no exporter, no tracer
        if not on_counts or on_counts[0] <= 0 or on_counts[0] % per_round or len(set(on_counts)) != 1:
            raise SystemExit(f"tracing on exported {on_counts[:10]}... spans per round of {per_round} calls: not "
                             f"the same whole number per call in every round, so the tracer was not on the path")
        spans_per_call["on"] = (counters["on"]() - counts_before["on"]) / calls
    if "oi_exporter" in env:
        spans_per_call["openinference"] = (counters["openinference"]() - counts_before["openinference"]) / calls

    def added(side: str, baseline: str, figures: dict[str, list[float]]) -> float | None:
        if side not in figures:
            return None
        return round(statistics.median(s - b for s, b in zip(figures[side], figures[baseline], strict=True)), 2)

    result = {
        "added_us_per_call": {"off": added("off", "base", wall), "on": added("on", "base", wall),
                              "openinference": added("openinference", "oi_base", wall)},
        "spans_per_call": spans_per_call,
    }
    import opentelemetry.sdk.version as otel_version

    detail: dict[str, Any] = {
        "calls_per_round": args.calls, "untimed_calls_per_round": warm, "rounds": args.rounds,
        "collector": endpoint, "root_span": args.root, "encoder": env.get("encoder"),
        "median_us_per_call": {name: round(statistics.median(values), 1) for name, values in wall.items()},
        "quartiles_us": {name: [round(q, 1) for q in statistics.quantiles(values, n=4)]
                         for name, values in wall.items()},
        "added_cpu_us_per_call": {"off": added("off", "base", cpu), "on": added("on", "base", cpu),
                                  "openinference": added("openinference", "oi_base", cpu)},
        "targets_us": {"off": 1, "on": 25},
        **{side: {"added_us_per_call": added(side, "base", wall), "added_cpu_us_per_call": added(side, "base", cpu),
                  "spans_per_call": (counters[side]() - counts_before[side]) / calls}
           for side in ("on_sdk", "on_callbacks") if side in env},
        "not_measured": env["reasons"],
        **({"native_sink": env["sink"].stats()} if "sink" in env else {}),
        "python": sys.version.split()[0], "dspy": dspy.__version__,
        "opentelemetry_sdk": otel_version.__version__,
    }
    try:
        from importlib.metadata import version

        detail["openinference_instrumentation_dspy"] = version("openinference-instrumentation-dspy")
    except Exception:  # not installed: the side is absent and says why
        pass
    print(json.dumps(detail), flush=True)
    log(f"added us/call: {result['added_us_per_call']}, spans/call: {spans_per_call}")
    bars = [(name, statistics.median(values)) for name, values in wall.items()]
    emit(result, args.json_path, args.plot_path, bars=bars,
         title="Per-call time of dspy.Predict with a zero-cost LM (us, lower is better)")


if __name__ == "__main__":
    main()
