"""Optimizer runs: a list of trials (an optimizer with options, compiled on the train set and scored on the dev
set), run one after another with rich progress, checkpointed after every trial so an interrupted run resumes
where it stopped, within time and cost budgets, ending in a JSON report, a plot of score over candidates, and the
best program registered.

Configure a run from a TOML file (:meth:`RunConfig.from_toml`, ``dspyo3 optimize run CONFIG.toml``)::

    [run]
    name = "gsm8k-cot"
    program = "dspyo3_optimize.examples:gsm8k_program"   # a dspy.Module, or a callable returning one
    metric = "gsm8k"                                     # built-in name or import path
    lm = "default"                                       # LM profile (default: the default profile)
    out_dir = "runs/gsm8k-cot"                           # checkpoint, trials, report, plot
    max_seconds = 1800                                   # no new trial starts after this
    max_cost_usd = 2.0                                   # per-run budget (enforced per call with dspyo3-production)
    executor = "local"                                   # or "ray" for the dev-set evaluations

    [data]
    path = "gsm8k/train.jsonl"   # or train = ... and dev = ...
    preset = "gsm8k"             # or inputs = ["question"]
    limit = 60
    dev_fraction = 0.5
    seed = 0

    [[trials]]
    optimizer = "bootstrap_fewshot"
    options = { max_bootstrapped_demos = 2, max_labeled_demos = 2 }

    [[trials]]
    optimizer = "mipro_v2"
    options = { auto = "light" }

    [register]
    name = "gsm8k-cot"          # registry = "..." (default: [optimize] registry); stage = "dev"

or from Python with :class:`RunConfig` and :func:`run`.

A trial is the unit of checkpointing: a finished trial's program state and scores are written to the run directory
(``trials/<n>.json`` and ``checkpoint.json``, atomically) and never re-run on resume; a trial that was running when
the process died starts again from its beginning.

The parts: :mod:`~dspyo3_optimize.run_config` (the configuration and its TOML form),
:mod:`~dspyo3_optimize.checkpoint` (the typed checkpoint and the run directory), :mod:`~dspyo3_optimize.run_budget`
(the cost budget), :mod:`~dspyo3_optimize.reporting` (report, progress bar, plot); this module runs the trials and
re-exports the public names of the others.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dspyo3_core.files import atomic_write_bytes, atomic_write_text, loads_json
from dspyo3_core.program_state import apply_state, learned_state
from dspyo3_core.secrets import redact
from dspyo3_optimize.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    RunDirectory,
    fingerprint,
    fingerprint_difference,
    fingerprint_parts,
)
from dspyo3_optimize.common import canonical, jsonable, now, reason_line, sha256_hex, state_checksum
from dspyo3_optimize.data import dataset_hash, load_examples, split
from dspyo3_optimize.evaluate import Executor, evaluate, make_executor
from dspyo3_optimize.metrics import Metric, import_object, metric_name, resolve_metric
from dspyo3_optimize.optimizers import build_optimizer, candidate_scores, compile_program, get_optimizer
from dspyo3_optimize.reporting import ProgressBar, RunReport, failure_summary, plot_scores
from dspyo3_optimize.run_budget import RunBudget
from dspyo3_optimize.run_config import DataSpec, RegisterSpec, RunConfig, RunError, TrialSpec

Run = RunDirectory
"""The run directory (:class:`~dspyo3_optimize.checkpoint.RunDirectory`), under its earlier name."""

__all__ = [
    "CHECKPOINT_VERSION",
    "AllExamplesFailed",
    "Checkpoint",
    "CheckpointError",
    "DataSpec",
    "RegisterSpec",
    "Run",
    "RunConfig",
    "RunDirectory",
    "RunError",
    "RunReport",
    "TrialSpec",
    "load_trial_program",
    "run",
]


class AllExamplesFailed(RuntimeError):
    """Every dev example of a trial failed (the program raised, e.g. every LM call was refused, or the metric
    did): its score would measure nothing, so the trial counts as failed (and runs again on resume).

    Attributes:
        reason: the first failed example's error, one line, secrets masked.
    """

    def __init__(self, failed: int, index: int, reason: str) -> None:
        super().__init__(f"all {failed} dev examples failed; the first (#{index}): {reason}")
        self.reason = reason


def _build_program(program: Any, base: Any = None, search: Sequence[Path] = ()) -> Any:
    if base is not None:
        return base.deepcopy()
    obj = import_object(program, search) if isinstance(program, str) else program
    if hasattr(obj, "dump_state") and hasattr(obj, "deepcopy"):
        return obj.deepcopy()
    if callable(obj):
        made = obj()
        if not hasattr(made, "dump_state"):
            raise RunError(f"program {program!r} returned a {type(made).__name__}, not a dspy.Module")
        return made
    raise RunError(f"program {program!r} is neither a dspy.Module nor a callable that builds one")


def _load_data(config: RunConfig) -> tuple[list[Any], list[Any]]:
    if config.trainset is not None:
        if not config.devset:
            raise RunError("RunConfig(trainset=...) also needs devset=...")
        return list(config.trainset), list(config.devset)
    data = config.data
    if data is None:
        raise RunError("give the run a [data] table (or trainset= and devset= in Python)")

    def resolve(p: str) -> Path:
        expanded = Path(os.path.expandvars(p)).expanduser()
        return expanded if expanded.is_absolute() else config.base_dir / expanded

    kw: dict[str, Any] = {"inputs": data.inputs, "preset": data.preset}
    if data.train:
        train = load_examples(resolve(data.train), limit=data.limit, offset=data.offset, **kw)
        if data.dev:
            dev = load_examples(resolve(data.dev), limit=data.dev_limit or data.limit, **kw)
        else:
            train, dev = split(train, dev_fraction=data.dev_fraction, seed=data.seed, dev_size=data.dev_size)
        return train, dev
    assert data.path is not None
    examples = load_examples(resolve(data.path), limit=data.limit, offset=data.offset, **kw)
    return split(examples, dev_fraction=data.dev_fraction, seed=data.seed, dev_size=data.dev_size)


def _resolve_lm(lm: Any) -> tuple[Any, str | None]:
    """(LM object or None, its profile/model name)."""
    if lm is None or isinstance(lm, str):
        from dspyo3_core.config import build_lm, load_settings

        settings = load_settings()
        if lm is None and settings.default_profile is None:
            import dspy

            configured = dspy.settings.lm
            if configured is None:
                raise RunError("no LM: set [run] lm = \"PROFILE\", DSPYO3_LM=provider/model, or dspy.configure(lm=...)")
            return configured, getattr(configured, "model", None)
        profile = settings.profile(lm)
        return build_lm(profile), profile.name
    return lm, getattr(lm, "model", None)


def run(config: RunConfig, *, resume: bool = True, progress: bool = False,
        on_trial: Callable[[dict[str, Any]], None] | None = None) -> RunReport:
    """Run (or resume) the optimization described by ``config``.

    Args:
        config: what to run.
        resume: continue from ``config.out_dir``'s checkpoint when there is one (finished trials are not re-run);
            False starts over (the old checkpoint is replaced).
        progress: show a rich progress bar on stderr.
        on_trial: called with each finished trial's record.

    Returns:
        The :class:`RunReport`; ``report.json`` and ``scores.png`` are in ``config.out_dir``.

    Raises:
        RunError: the checkpoint belongs to a different configuration, or the inputs are unusable.
    """
    import dspy

    search = [config.base_dir]
    metric = resolve_metric(config.metric, search)
    for trial in config.trials:
        get_optimizer(trial.optimizer)  # unknown names fail before any LM call
    trainset, devset = _load_data(config)
    train_hash, dev_hash = dataset_hash(trainset), dataset_hash(devset)
    base_program = _build_program(config.program, search=search)
    lm, lm_name = _resolve_lm(config.lm)
    parts = fingerprint_parts(config, base_program, lm_name, train_hash, dev_hash)
    config_fingerprint = fingerprint(parts)
    rundir = RunDirectory(Path(config.out_dir))
    rundir.dir.mkdir(parents=True, exist_ok=True)
    (rundir.dir / "trials").mkdir(exist_ok=True)
    checkpoint = rundir.load_checkpoint() if resume else None
    if checkpoint is not None and checkpoint.fingerprint != config_fingerprint:
        raise RunError(f"the checkpoint in {rundir.dir} was written for a different run config "
                       f"({fingerprint_difference(checkpoint.fingerprint_parts, parts)}); use another "
                       "out_dir, or --fresh to discard it")
    if checkpoint is None:
        checkpoint = Checkpoint(run_id=f"{config.name}-{uuid.uuid4().hex[:8]}", fingerprint=config_fingerprint,
                                fingerprint_parts=parts)
    checkpoint.sessions += 1
    run_id = checkpoint.run_id
    resumed = checkpoint.finished()
    prior_elapsed = checkpoint.elapsed_seconds
    prior_cost = checkpoint.cost_usd or 0.0
    session_start = time.monotonic()
    executor = make_executor(config.executor)
    budget = RunBudget(config.max_cost_usd, run_id, lm, prior=prior_cost)
    specs: list[TrialSpec] = ([TrialSpec("baseline", name="baseline")] if config.baseline else []) + config.trials
    bar = ProgressBar(progress, len(specs), config.name)
    rundir.event("session_started", run_id=run_id, resumed_trials=resumed)
    status = "finished"

    def elapsed() -> float:
        return prior_elapsed + (time.monotonic() - session_start)

    def save() -> None:
        checkpoint.elapsed_seconds = round(elapsed(), 3)
        spent = budget.spent()
        checkpoint.cost_usd = None if spent is None else prior_cost + spent
        rundir.save_checkpoint(checkpoint)

    try:
        with dspy.context(lm=lm), budget.scope():
            for index, spec in enumerate(specs):
                record = checkpoint.trials.get(index)
                if record is not None and record.get("status") == "finished":
                    bar.update(f"{spec.label} (checkpoint)", advance=1, best=checkpoint.best()[1])
                    continue
                if config.max_seconds is not None and elapsed() >= config.max_seconds:
                    status = "time_budget_exceeded"
                    break
                if budget.exceeded():
                    status = "cost_budget_exceeded"
                    break
                attempts = int((record or {}).get("attempts", 0)) + 1
                checkpoint.trials[index] = {"index": index, "name": spec.label, "status": "running",
                                                    "optimizer": spec.optimizer, "attempts": attempts}
                save()
                rundir.event("trial_started", trial=index, name=spec.label, attempt=attempts)
                bar.update(f"{spec.label}")
                try:
                    record = _run_trial(index, spec, base_program, trainset, devset, metric, lm, executor,
                                        config, rundir)
                except Exception as exc:
                    if budget.is_budget_error(exc) or (isinstance(exc, AllExamplesFailed) and budget.refusals):
                        # the run's budget stopped the calls (every example failing because of refusals is
                        # the budget too, not a failure of the trial)
                        stop = str(exc) if budget.is_budget_error(exc) else (
                            f"cost budget: {budget.refusals} LM call(s) refused by the ${config.max_cost_usd:g} "
                            "run budget")
                        status = "cost_budget_exceeded"
                        checkpoint.trials[index].update(status="interrupted", error=stop)
                        rundir.event("trial_stopped", trial=index, reason=stop)
                        break
                    error = redact(f"{type(exc).__name__}: {exc}")
                    reason = exc.reason if isinstance(exc, AllExamplesFailed) else reason_line(error)
                    checkpoint.trials[index].update(status="failed", error=error, reason=reason)
                    rundir.event("trial_failed", trial=index, error=error)
                    save()
                    bar.update(spec.label, advance=1)
                    continue
                if budget.refusals:  # calls of this trial were refused: its score is not a real measurement
                    status = "cost_budget_exceeded"
                    checkpoint.trials[index].update(
                        status="interrupted", error=f"cost budget: {budget.refusals} LM call(s) refused by the "
                        f"${config.max_cost_usd:g} run budget")
                    rundir.event("trial_stopped", trial=index, reason="cost budget")
                    break
                record["attempts"] = attempts
                checkpoint.trials[index] = record
                save()
                rundir.event("trial_finished", trial=index, score=record["score"])
                bar.update(spec.label, advance=1, best=checkpoint.best()[1])
                if on_trial is not None:
                    on_trial(record)
    except BaseException as exc:  # Ctrl-C (or a crash) mid-trial: nothing running counts as finished
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
        for key, record in checkpoint.trials.items():
            if record.get("status") == "running":
                record.update(status="interrupted", error=redact(f"{type(exc).__name__}: {exc}".rstrip(": ")))
                rundir.event("trial_stopped", trial=key, reason=type(exc).__name__)
        raise
    finally:
        bar.close()
        try:
            checkpoint.status = status
            save()
        finally:
            budget.close()
            shutdown = getattr(executor, "shutdown", None)
            if shutdown is not None:
                shutdown()

    trials = checkpoint.records()
    run_error = failure_summary(trials, lm_name if isinstance(config.lm, str) or config.lm is None else None,
                                 rundir.dir / "report.json") if status == "finished" else None
    if run_error is not None:
        status = checkpoint.status = "failed"
        save()
    best_index, best_score = checkpoint.best()
    registered = checkpoint.registered
    if config.register is not None and best_index is not None and registered is None:
        registered = _register(config, checkpoint, best_index, rundir, lm_name, train_hash,
                               sorted(trainset[0].inputs().keys()) if trainset else [])
        checkpoint.registered = registered
        save()
    plot = plot_scores(trials, rundir.dir / "scores.png", config.name)
    report = RunReport(
        run_id=run_id, name=config.name, status=status, trials=trials, best_trial=best_index, best_score=best_score,
        out_dir=str(rundir.dir), report_path=str(rundir.dir / "report.json"), plot_path=plot,
        elapsed_seconds=round(elapsed(), 3), cost_usd=checkpoint.cost_usd, resumed_trials=resumed,
        registered=registered,
        dataset={"train": {"n": len(trainset), "hash": train_hash}, "dev": {"n": len(devset), "hash": dev_hash}},
        sessions=checkpoint.sessions, lm=lm_name, metric=metric_name(config.metric),
        executor=getattr(executor, "name", "custom"), budget_via=budget.via, error=run_error,
    )
    atomic_write_text(rundir.dir / "report.json", json.dumps(report.to_dict(), indent=2, default=str))
    rundir.event("session_finished", status=status, best_trial=best_index)
    return report


def _run_trial(index: int, spec: TrialSpec, base_program: Any, trainset: Sequence[Any], devset: Sequence[Any],
               metric: Metric, lm: Any, executor: Executor, config: RunConfig,
               rundir: RunDirectory) -> dict[str, Any]:
    started = time.monotonic()
    student = _build_program(config.program, base_program)
    inner: list[float] = []
    if spec.optimizer == "baseline":
        compiled = student
    else:
        optimizer = build_optimizer(spec.optimizer, metric, spec.options)
        compiled = compile_program(optimizer, student, trainset, devset, seed=spec.seed,
                                   compile_options=spec.compile)
        inner = candidate_scores(compiled, optimizer)
    result = evaluate(compiled, devset, metric, lm=lm, executor=executor, concurrency=config.concurrency)
    first = result.first_error
    if first is not None and result.failures == result.n:
        raise AllExamplesFailed(result.n, *first)
    blob = canonical(learned_state(compiled.dump_state()))  # the bytes the registry would store: same checksum
    state_file = rundir.dir / "trials" / f"{index}.json"
    atomic_write_bytes(state_file, blob)
    return {
        "index": index, "name": spec.label, "status": "finished", "optimizer": spec.optimizer,
        "options": jsonable(spec.options), "compile": jsonable(spec.compile), "seed": spec.seed,
        "score": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high, "n_dev": result.n,
        "failures": result.failures, "dev_scores": result.scores, "candidate_scores": inner,
        "state_file": str(state_file.relative_to(rundir.dir)),
        "state_sha256": "sha256:" + sha256_hex(blob),
        "seconds": round(time.monotonic() - started, 3), "finished_at": now(),
    }


def load_trial_program(out_dir: str | os.PathLike[str], index: int, program: Any) -> Any:
    """Load trial ``index``'s saved state (checked against its recorded sha256) into ``program``."""
    rundir = RunDirectory(Path(out_dir))
    checkpoint = rundir.load_checkpoint()
    record = None if checkpoint is None else checkpoint.trials.get(index)
    if record is None or record.get("status") != "finished":
        raise RunError(f"no finished trial {index} in {out_dir}")
    path = rundir.dir / record["state_file"]
    blob = path.read_bytes()
    if sha256_hex(blob) != str(record["state_sha256"]).removeprefix("sha256:"):
        raise RunError(f"{path} does not match the checksum recorded in the checkpoint: it was modified or "
                       "corrupted; re-run the trial with --fresh")
    try:
        apply_state(program, loads_json(blob, source=str(path)), source=str(path))
    except ValueError as exc:  # not JSON, nested too deeply, or more than learned state (UnsafeStateError)
        raise RunError(str(exc)) from None
    return program


def _register(config: RunConfig, checkpoint: Checkpoint, best_index: int, rundir: RunDirectory,
              lm_name: str | None, train_hash: str, inputs: list[str]) -> dict[str, Any]:
    from dspyo3_optimize.programs.metadata import Score
    from dspyo3_optimize.programs.registry import open_registry

    assert config.register is not None
    record = checkpoint.trials[best_index]
    program = load_trial_program(rundir.dir, best_index, _build_program(config.program, search=[config.base_dir]))
    program_registry = open_registry(config.register.registry)
    # killed after registering but before the checkpoint recorded it? then that version is this run's
    meta = program_registry.find(config.register.name, run_id=checkpoint.run_id, checksum=state_checksum(program))
    if meta is not None:
        rundir.event("registered", name=meta.name, version=meta.version, registry=program_registry.url, found=True)
        return {"name": meta.name, "version": meta.version, "registry": program_registry.url,
                "stage": config.register.stage}
    meta = program_registry.register(
        config.register.name, program, parent=config.register.parent, bump=config.register.bump,  # type: ignore[arg-type]
        stage=config.register.stage,
        factory=config.program if isinstance(config.program, str) else None, dataset_hash=train_hash,
        metric=metric_name(config.metric),
        scores={"dev": Score(record["score"], record["ci_low"], record["ci_high"], record["n_dev"])},
        lm_profile=lm_name, optimizer={"name": record["optimizer"], "options": record.get("options")},
        run_id=checkpoint.run_id,
        extra={"inputs": inputs, "preset": config.data.preset if config.data else None},
    )
    rundir.event("registered", name=meta.name, version=meta.version, registry=program_registry.url)
    return {"name": meta.name, "version": meta.version, "registry": program_registry.url,
            "stage": config.register.stage}
