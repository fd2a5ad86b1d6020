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
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspyo3_core.config import ConfigError, check_keys
from dspyo3_core.files import append_jsonl, atomic_write_bytes, atomic_write_text, loads_json, read_jsonl
from dspyo3_core.program_state import apply_state, learned_state
from dspyo3_core.secrets import redact
from dspyo3_optimize._common import canonical, now, reason_line, sha256_hex, state_checksum
from dspyo3_optimize.data import dataset_hash, load_examples, split
from dspyo3_optimize.evaluate import Executor, evaluate, make_executor
from dspyo3_optimize.metrics import Metric, import_object, metric_name, resolve_metric
from dspyo3_optimize.optimizers import build_optimizer, candidate_scores, compile_program, get_optimizer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHECKPOINT_VERSION = 1


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


class AllExamplesFailed(RuntimeError):
    """Every dev example of a trial failed (the program raised, e.g. every LM call was refused, or the metric
    did): its score would measure nothing, so the trial counts as failed (and runs again on resume).

    Attributes:
        reason: the first failed example's error, one line, secrets masked.
    """

    def __init__(self, failed: int, index: int, reason: str) -> None:
        super().__init__(f"all {failed} dev examples failed; the first (#{index}): {reason}")
        self.reason = reason


@dataclass
class TrialSpec:
    """One trial: ``optimizer`` built with ``options``, compiled with ``compile`` options (and ``seed``)."""

    optimizer: str
    options: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """Display name."""
        return self.name or self.optimizer


@dataclass
class DataSpec:
    """Where the train and dev examples come from (see :mod:`dspyo3_optimize.data`)."""

    path: str | None = None
    train: str | None = None
    dev: str | None = None
    inputs: list[str] | None = None
    preset: str | None = None
    limit: int | None = None
    offset: int = 0
    dev_fraction: float = 0.5
    dev_size: int | None = None
    dev_limit: int | None = None
    seed: int = 0


@dataclass
class RegisterSpec:
    """Register the best program as ``name`` in ``registry`` (default: ``[optimize] registry``) at ``stage``."""

    name: str
    registry: str | None = None
    stage: str | None = "dev"
    parent: str | None = None
    bump: str = "patch"

    def __post_init__(self) -> None:
        from dspyo3_optimize.programs.metadata import STAGES

        if self.bump not in ("major", "minor", "patch"):
            raise ConfigError(f"[register] bump = {self.bump!r}; use major, minor or patch")
        if self.stage is not None and self.stage not in STAGES:
            raise ConfigError(f"[register] stage = {self.stage!r}; use one of {', '.join(STAGES)}")


@dataclass
class RunConfig:
    """Everything a run needs. In Python, ``trainset`` / ``devset`` may replace ``data`` and ``program``, ``metric``
    and ``lm`` may be objects instead of import paths and profile names."""

    name: str
    program: Any
    metric: str | Metric
    trials: list[TrialSpec]
    out_dir: str | os.PathLike[str]
    data: DataSpec | None = None
    trainset: list[Any] | None = None
    devset: list[Any] | None = None
    lm: Any = None
    executor: str | Executor = "local"
    concurrency: int = 8
    max_seconds: float | None = None
    max_cost_usd: float | None = None
    baseline: bool = True
    register: RegisterSpec | None = None
    base_dir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.trials:
            raise RunError("a run needs at least one trial (TrialSpec(optimizer, options))")

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> RunConfig:
        """Read a run config file; unknown or missing keys are errors naming the key and the file."""
        file = Path(path)
        try:
            with file.open("rb") as handle:
                doc = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read run config {file}: {exc.strerror}") from None
        return cls.from_dict(doc, source=str(file), base_dir=file.resolve().parent)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "run config",
                  base_dir: Path | None = None) -> RunConfig:
        """Build from the parsed TOML structure (``[run]``, ``[data]``, ``[[trials]]``, ``[register]``)."""
        base = base_dir or Path.cwd()
        _only(doc, {"run", "data", "trials", "register"}, source, "the top level")
        run = _table(doc, "run", source, required=True)
        _only(run, {"name", "program", "metric", "lm", "out_dir", "executor", "concurrency", "max_seconds",
                    "max_cost_usd", "baseline"}, source, "[run]")
        for key in ("name", "program", "metric"):
            if not isinstance(run.get(key), str) or not run[key]:
                raise ConfigError(f"{source}: [run] needs {key} = \"...\" (a string)")
        _check_types(run, source, "[run]", {"lm": str, "out_dir": str, "baseline": bool})
        data_table = _table(doc, "data", source, required=True)
        _only(data_table, set(DataSpec.__dataclass_fields__), source, "[data]")
        _check_types(data_table, source, "[data]", {
            "path": str, "train": str, "dev": str, "preset": str, "limit": int, "offset": int, "dev_size": int,
            "dev_limit": int, "seed": int, "dev_fraction": (int, float), "inputs": list})
        data = DataSpec(**data_table)
        if not (data.path or data.train):
            raise ConfigError(f"{source}: [data] needs path = \"file.jsonl\" (split into train/dev) or train = ...")
        trials_raw = doc.get("trials")
        if not isinstance(trials_raw, list) or not trials_raw:
            raise ConfigError(f"{source}: add at least one [[trials]] table with optimizer = \"...\"")
        trials = []
        for number, item in enumerate(trials_raw, 1):
            if not isinstance(item, dict):
                raise ConfigError(f"{source}: [[trials]] #{number} must be a table")
            _only(item, {"optimizer", "options", "compile", "seed", "name"}, source, f"[[trials]] #{number}")
            if not isinstance(item.get("optimizer"), str):
                raise ConfigError(f"{source}: [[trials]] #{number} needs optimizer = \"...\"")
            _check_types(item, source, f"[[trials]] #{number}",
                         {"options": dict, "compile": dict, "seed": int, "name": str})
            trials.append(TrialSpec(item["optimizer"], dict(item.get("options") or {}),
                                    dict(item.get("compile") or {}), item.get("seed"), item.get("name")))
        register = None
        if "register" in doc:
            reg = _table(doc, "register", source)
            _only(reg, set(RegisterSpec.__dataclass_fields__), source, "[register]")
            if not isinstance(reg.get("name"), str):
                raise ConfigError(f"{source}: [register] needs name = \"program-name\"")
            _check_types(reg, source, "[register]", {"registry": str, "stage": str, "parent": str, "bump": str})
            registry = reg.get("registry")
            if registry and "://" not in registry:  # a directory: relative to this file, like out_dir
                path = Path(os.path.expandvars(registry)).expanduser()
                reg = {**reg, "registry": str(path if path.is_absolute() else base / path)}
            register = RegisterSpec(**reg)
        if run.get("executor", "local") not in ("local", "ray"):
            raise ConfigError(f"{source}: [run] executor = {run['executor']!r}; use \"local\" or \"ray\"")
        if not isinstance(run.get("concurrency", 8), int) or run.get("concurrency", 8) < 1:
            raise ConfigError(f"{source}: [run] concurrency must be a positive integer")
        for key in ("max_seconds", "max_cost_usd"):
            value = run.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{source}: [run] {key} must be a number >= 0, got {value!r}")
        out_dir = Path(str(run.get("out_dir") or f"runs/{run['name']}"))
        return cls(
            name=run["name"], program=run["program"], metric=run["metric"], trials=trials,
            out_dir=out_dir if out_dir.is_absolute() else base / out_dir, data=data, lm=run.get("lm"),
            executor=run.get("executor", "local"), concurrency=int(run.get("concurrency", 8)),
            max_seconds=run.get("max_seconds"), max_cost_usd=run.get("max_cost_usd"),
            baseline=bool(run.get("baseline", True)), register=register, base_dir=base,
        )


def _table(doc: Mapping[str, Any], key: str, source: str, required: bool = False) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{source}: missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a table ([{key}])")
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", list: "a list", str: "a string", bool: "true or false",
               dict: "a table, e.g. { key = 1 }"}


def _check_types(table: Mapping[str, Any], source: str, where: str,
                 types: Mapping[str, type | tuple[type, ...]]) -> None:
    for key, expected in types.items():
        value: Any = table.get(key)
        if value is None:
            continue
        kinds = expected if isinstance(expected, tuple) else (expected,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
            raise ConfigError(f"{source}: {where} {key} must be {names}, got {value!r}")
        if key == "inputs" and not all(isinstance(item, str) for item in table[key]):
            raise ConfigError(f"{source}: {where} inputs must be a list of field names, got {value!r}")


def _only(table: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    check_keys(table, allowed, where, source)


# -- results ----------------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What a run produced (also written as ``report.json`` in the run directory)."""

    run_id: str
    name: str
    status: str
    trials: list[dict[str, Any]]
    best_trial: int | None
    best_score: float | None
    out_dir: str
    report_path: str
    plot_path: str | None
    elapsed_seconds: float
    cost_usd: float | None
    resumed_trials: list[int]
    registered: dict[str, Any] | None
    dataset: dict[str, Any]
    sessions: int = 1
    lm: str | None = None
    metric: str = ""
    executor: str = "local"
    budget_via: str = "none"
    error: str | None = None
    """Set when every trial that ran failed (status ``"failed"``): one line naming how many failed, the first
    error's reason (secrets masked) and what to do."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _failure_summary(trials: Sequence[Mapping[str, Any]], profile: str | None, report_path: Path) -> str | None:
    """One line when every trial that ran (finished or failed) failed; None when any finished or none ran."""
    from dspyo3_optimize._common import error_fix

    ran = [t for t in trials if t.get("status") in ("finished", "failed")]
    if not ran or any(t.get("status") == "finished" for t in ran):
        return None
    first = ran[0]
    reason = str(first.get("reason") or reason_line(str(first.get("error") or "unknown error")))
    what = "the trial" if len(ran) == 1 else f"all {len(ran)} trials"
    return (f"{what} failed; the first error (trial #{first.get('index')} {first.get('name')}): {reason}; "
            f"{error_fix(reason, profile)}; each trial's error is in {report_path}")


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


def _fingerprint_parts(config: RunConfig, program: Any, lm_name: str | None, train_hash: str,
                       dev_hash: str) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: each part hashed or named so that it is the same in every
    process for the same configuration (LM objects by model name, the program by its DSPy state)."""
    return {
        "program": config.program if isinstance(config.program, str) else type(config.program).__name__,
        "program_state": state_checksum(program),
        "lm": lm_name,
        "metric": metric_name(config.metric),
        "trials": _jsonable([t.__dict__ for t in config.trials]),
        "baseline": config.baseline,
        "train": train_hash,
        "dev": dev_hash,
    }


def _fingerprint(parts: Mapping[str, Any]) -> str:
    return "sha256:" + sha256_hex(json.dumps(parts, sort_keys=True).encode())


def _fingerprint_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    if not old:
        return "program, LM, metric, trials or data changed"
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            changed.append(f"{key}: {a!r} -> {b!r}" if key in ("lm", "program", "metric", "baseline")
                           else f"{key} changed")
    return "; ".join(changed) or "the configuration changed"


class _Budget:
    """The per-run cost budget: through dspyo3-production's CostTracker when it is installed (calls are refused
    before they overspend), else the cost DSPy records in the LM's history, checked between trials.

    With dspyo3-production the run adds a :class:`~dspyo3_production.Budget` of its own (to the active stack's
    tracker, or to a stack it enables) and counts the calls *that* budget refuses for *this* run: refusals by other
    budgets of a shared tracker, or of other runs, never end this run."""

    def __init__(self, limit: float | None, run_id: str, lm: Any, prior: float = 0.0) -> None:
        self.limit = limit
        self.prior = prior
        remaining = None if limit is None else limit - prior  # what earlier sessions of this run left
        self.run_id = run_id
        self.lm = lm
        self._stack: Any = None
        self._enabled_here = False
        self._history_start = len(getattr(lm, "history", []) or [])
        self.via = "none"
        self._exceeded_types: tuple[type[BaseException], ...] = ()
        self._budget: Any = None
        self._added = False
        self._refusals = 0
        self._refusals_lock = threading.Lock()
        prod: Any
        try:
            prod = importlib.import_module("dspyo3_production")
        except ImportError:
            prod = None
        if prod is not None:
            self._exceeded_types = (prod.BudgetExceededError,)
            if remaining is not None:
                self._budget = prod.Budget(max(remaining, 0.0), per="run", name=f"optimize-run:{run_id}",
                                           on_refuse=self._on_refuse)
            stack = prod.active()
            if stack is None and self._budget is not None:
                stack = prod.enable(prod.Production(metrics=False, log_events=False, module_callbacks=False,
                                                    budgets=[self._budget]))
                self._enabled_here = True
            elif stack is not None and self._budget is not None and stack.costs is not None:
                stack.costs.budgets.append(self._budget)
                self._added = True
            self._stack = stack
            if stack is not None and stack.costs is not None:
                self.via = "dspyo3-production"
        if self.via == "none" and limit is not None:
            self.via = "lm-history"

    def _on_refuse(self, error: Any) -> None:
        """This run's budget refused a call: count it if the call was this run's (a per-run budget also limits
        the calls of other runs sharing the tracker; those are theirs to count)."""
        if getattr(error, "scope", None) == f"run={self.run_id}":
            with self._refusals_lock:
                self._refusals += 1

    @property
    def refusals(self) -> int:
        """Calls of this run refused by this run's budget (optimizers and evaluation swallow per-example errors,
        so this count is how the run learns that its budget stopped calls)."""
        return self._refusals

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Charge LM calls in this block to the run."""
        if self._stack is None:
            yield
            return
        import dspyo3_production as prod

        with prod.attribute(run=self.run_id):
            yield

    def spent(self) -> float | None:
        """USD spent by this run in this process (None when nothing tracks cost)."""
        if self._stack is not None and self._stack.costs is not None:
            return float(self._stack.costs.totals("run").get(self.run_id, 0.0))
        history = getattr(self.lm, "history", None)
        if history is None:
            return None
        return float(sum((entry.get("cost") or 0.0) for entry in history[self._history_start:]))

    def exceeded(self) -> bool:
        """The limit is reached (counting what earlier sessions of this run spent)."""
        if self.refusals:
            return True
        if self.limit is not None and self.prior >= self.limit:
            return True
        spent = self.spent()
        return self.limit is not None and spent is not None and self.prior + spent >= self.limit

    def is_budget_error(self, exc: BaseException) -> bool:
        """``exc`` is dspyo3-production's refusal of a call over budget."""
        return bool(self._exceeded_types) and isinstance(exc, self._exceeded_types)

    def close(self) -> None:
        """Take off the stack this run enabled (or the budget it added to an existing one)."""
        if self._added and self._stack is not None and self._stack.costs is not None:
            budgets = self._stack.costs.budgets  # by identity: an equal budget of another run stays
            budgets[:] = [b for b in budgets if b is not self._budget]
        if self._enabled_here:
            import dspyo3_production as prod

            prod.disable(close=True)


class _Progress:
    def __init__(self, enabled: bool, total: int, name: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(name, total=total, best="-")

    def update(self, description: str, advance: int = 0, best: float | None = None) -> None:
        if self._progress is not None:
            fields: dict[str, Any] = {"description": description, "advance": advance}
            if best is not None:
                fields["best"] = f"{best:.3f}"
            self._progress.update(self._task, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


class Run:
    """One run's directory: ``checkpoint.json``, ``events.jsonl``, ``trials/<n>.json``, ``report.json``,
    ``scores.png``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        self.checkpoint_path = out_dir / "checkpoint.json"
        self.events_path = out_dir / "events.jsonl"

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint, or None when there is none."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            data = loads_json(self.checkpoint_path.read_bytes(), source=str(self.checkpoint_path))
        except ValueError:  # also UnicodeDecodeError, and input nested too deeply
            raise RunError(f"{self.checkpoint_path} is not valid JSON; delete it (or run with --fresh) to start "
                           "over") from None
        if not isinstance(data, dict):
            raise RunError(f"{self.checkpoint_path} is not a checkpoint (a JSON object); delete it (or run with "
                           "--fresh) to start over")
        if data.get("version") != CHECKPOINT_VERSION:
            raise RunError(f"{self.checkpoint_path} has checkpoint version {data.get('version')!r}, this dspyo3-"
                           f"optimize writes {CHECKPOINT_VERSION}; start over with --fresh")
        return dict(data)

    def save_checkpoint(self, data: Mapping[str, Any]) -> None:
        """Write the checkpoint atomically."""
        atomic_write_text(self.checkpoint_path, json.dumps(data, indent=2, sort_keys=True, default=str))

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to ``events.jsonl`` (whole lines, even with concurrent writers)."""
        append_jsonl(self.events_path, {"event": kind, "at": now(), "pid": os.getpid(), **fields}, default=str)

    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far (a line torn by a crash is skipped)."""
        if not self.events_path.is_file():
            return []
        return [e for e in read_jsonl(self.events_path, torn_prefix='{"event"') if isinstance(e, dict)]


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
    parts = _fingerprint_parts(config, base_program, lm_name, train_hash, dev_hash)
    fingerprint = _fingerprint(parts)
    rundir = Run(Path(config.out_dir))
    rundir.dir.mkdir(parents=True, exist_ok=True)
    (rundir.dir / "trials").mkdir(exist_ok=True)
    checkpoint = rundir.load_checkpoint() if resume else None
    if checkpoint is not None and checkpoint.get("fingerprint") != fingerprint:
        raise RunError(f"the checkpoint in {rundir.dir} was written for a different run config "
                       f"({_fingerprint_difference(checkpoint.get('fingerprint_parts'), parts)}); use another "
                       "out_dir, or --fresh to discard it")
    if checkpoint is None:
        checkpoint = {"version": CHECKPOINT_VERSION, "run_id": f"{config.name}-{uuid.uuid4().hex[:8]}",
                      "fingerprint": fingerprint, "fingerprint_parts": parts, "created_at": now(),
                      "elapsed_seconds": 0.0, "cost_usd": 0.0, "trials": {}, "status": "running",
                      "registered": None, "sessions": 0}
    checkpoint["sessions"] = int(checkpoint.get("sessions", 0)) + 1
    run_id = str(checkpoint["run_id"])
    resumed = sorted(int(k) for k, v in checkpoint["trials"].items() if v.get("status") == "finished")
    prior_elapsed = float(checkpoint.get("elapsed_seconds", 0.0))
    prior_cost = float(checkpoint.get("cost_usd") or 0.0)
    session_start = time.monotonic()
    executor = make_executor(config.executor)
    budget = _Budget(config.max_cost_usd, run_id, lm, prior=prior_cost)
    specs: list[TrialSpec] = ([TrialSpec("baseline", name="baseline")] if config.baseline else []) + config.trials
    bar = _Progress(progress, len(specs), config.name)
    rundir.event("session_started", run_id=run_id, resumed_trials=resumed)
    status = "finished"

    def elapsed() -> float:
        return prior_elapsed + (time.monotonic() - session_start)

    def save() -> None:
        checkpoint["elapsed_seconds"] = round(elapsed(), 3)
        spent = budget.spent()
        checkpoint["cost_usd"] = None if spent is None else prior_cost + spent
        rundir.save_checkpoint(checkpoint)

    try:
        with dspy.context(lm=lm), budget.scope():
            for index, spec in enumerate(specs):
                record = checkpoint["trials"].get(str(index))
                if record is not None and record.get("status") == "finished":
                    bar.update(f"{spec.label} (checkpoint)", advance=1, best=_best(checkpoint)[1])
                    continue
                if config.max_seconds is not None and elapsed() >= config.max_seconds:
                    status = "time_budget_exceeded"
                    break
                if budget.exceeded():
                    status = "cost_budget_exceeded"
                    break
                attempts = int((record or {}).get("attempts", 0)) + 1
                checkpoint["trials"][str(index)] = {"index": index, "name": spec.label, "status": "running",
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
                        checkpoint["trials"][str(index)].update(status="interrupted", error=stop)
                        rundir.event("trial_stopped", trial=index, reason=stop)
                        break
                    error = redact(f"{type(exc).__name__}: {exc}")
                    reason = exc.reason if isinstance(exc, AllExamplesFailed) else reason_line(error)
                    checkpoint["trials"][str(index)].update(status="failed", error=error, reason=reason)
                    rundir.event("trial_failed", trial=index, error=error)
                    save()
                    bar.update(spec.label, advance=1)
                    continue
                if budget.refusals:  # calls of this trial were refused: its score is not a real measurement
                    status = "cost_budget_exceeded"
                    checkpoint["trials"][str(index)].update(
                        status="interrupted", error=f"cost budget: {budget.refusals} LM call(s) refused by the "
                        f"${config.max_cost_usd:g} run budget")
                    rundir.event("trial_stopped", trial=index, reason="cost budget")
                    break
                record["attempts"] = attempts
                checkpoint["trials"][str(index)] = record
                save()
                rundir.event("trial_finished", trial=index, score=record["score"])
                bar.update(spec.label, advance=1, best=_best(checkpoint)[1])
                if on_trial is not None:
                    on_trial(record)
    except BaseException as exc:  # Ctrl-C (or a crash) mid-trial: nothing running counts as finished
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
        for key, record in checkpoint["trials"].items():
            if record.get("status") == "running":
                record.update(status="interrupted", error=redact(f"{type(exc).__name__}: {exc}".rstrip(": ")))
                rundir.event("trial_stopped", trial=int(key), reason=type(exc).__name__)
        raise
    finally:
        bar.close()
        try:
            checkpoint["status"] = status
            save()
        finally:
            budget.close()
            shutdown = getattr(executor, "shutdown", None)
            if shutdown is not None:
                shutdown()

    trials = [checkpoint["trials"][k] for k in sorted(checkpoint["trials"], key=int)]
    run_error = _failure_summary(trials, lm_name if isinstance(config.lm, str) or config.lm is None else None,
                                 rundir.dir / "report.json") if status == "finished" else None
    if run_error is not None:
        status = checkpoint["status"] = "failed"
        save()
    best_index, best_score = _best(checkpoint)
    registered = checkpoint.get("registered")
    if config.register is not None and best_index is not None and registered is None:
        registered = _register(config, checkpoint, best_index, rundir, lm_name, train_hash,
                               sorted(trainset[0].inputs().keys()) if trainset else [])
        checkpoint["registered"] = registered
        save()
    plot = _plot(trials, rundir.dir / "scores.png", config.name)
    report = RunReport(
        run_id=run_id, name=config.name, status=status, trials=trials, best_trial=best_index, best_score=best_score,
        out_dir=str(rundir.dir), report_path=str(rundir.dir / "report.json"), plot_path=plot,
        elapsed_seconds=round(elapsed(), 3), cost_usd=checkpoint.get("cost_usd"), resumed_trials=resumed,
        registered=registered,
        dataset={"train": {"n": len(trainset), "hash": train_hash}, "dev": {"n": len(devset), "hash": dev_hash}},
        sessions=int(checkpoint["sessions"]), lm=lm_name, metric=metric_name(config.metric),
        executor=getattr(executor, "name", "custom"), budget_via=budget.via, error=run_error,
    )
    atomic_write_text(rundir.dir / "report.json", json.dumps(report.to_dict(), indent=2, default=str))
    rundir.event("session_finished", status=status, best_trial=best_index)
    return report


def _best(checkpoint: Mapping[str, Any]) -> tuple[int | None, float | None]:
    best: tuple[int | None, float | None] = (None, None)
    for key in sorted(checkpoint["trials"], key=int):
        record = checkpoint["trials"][key]
        if record.get("status") == "finished" and (best[1] is None or record["score"] > best[1]):
            best = (int(key), float(record["score"]))
    return best


def _run_trial(index: int, spec: TrialSpec, base_program: Any, trainset: Sequence[Any], devset: Sequence[Any],
               metric: Metric, lm: Any, executor: Executor, config: RunConfig, rundir: Run) -> dict[str, Any]:
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
        "options": _jsonable(spec.options), "compile": _jsonable(spec.compile), "seed": spec.seed,
        "score": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high, "n_dev": result.n,
        "failures": result.failures, "dev_scores": result.scores, "candidate_scores": inner,
        "state_file": str(state_file.relative_to(rundir.dir)),
        "state_sha256": "sha256:" + sha256_hex(blob),
        "seconds": round(time.monotonic() - started, 3), "finished_at": now(),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "model", None) or type(o).__name__))


def load_trial_program(out_dir: str | os.PathLike[str], index: int, program: Any) -> Any:
    """Load trial ``index``'s saved state (checked against its recorded sha256) into ``program``."""
    rundir = Run(Path(out_dir))
    checkpoint = rundir.load_checkpoint()
    if checkpoint is None or str(index) not in checkpoint["trials"]:
        raise RunError(f"no trial {index} in {out_dir}")
    record = checkpoint["trials"][str(index)]
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


def _register(config: RunConfig, checkpoint: Mapping[str, Any], best_index: int, rundir: Run,
              lm_name: str | None, train_hash: str, inputs: list[str]) -> dict[str, Any]:
    from dspyo3_optimize.programs.metadata import Score
    from dspyo3_optimize.programs.registry import open_registry

    assert config.register is not None
    record = checkpoint["trials"][str(best_index)]
    program = load_trial_program(rundir.dir, best_index, _build_program(config.program, search=[config.base_dir]))
    registry = open_registry(config.register.registry)
    # killed after registering but before the checkpoint recorded it? then that version is this run's
    meta = registry.find(config.register.name, run_id=str(checkpoint["run_id"]), checksum=state_checksum(program))
    if meta is not None:
        rundir.event("registered", name=meta.name, version=meta.version, registry=registry.url, found=True)
        return {"name": meta.name, "version": meta.version, "registry": registry.url,
                "stage": config.register.stage}
    meta = registry.register(
        config.register.name, program, parent=config.register.parent, bump=config.register.bump,  # type: ignore[arg-type]
        stage=config.register.stage,
        factory=config.program if isinstance(config.program, str) else None, dataset_hash=train_hash,
        metric=metric_name(config.metric),
        scores={"dev": Score(record["score"], record["ci_low"], record["ci_high"], record["n_dev"])},
        lm_profile=lm_name, optimizer={"name": record["optimizer"], "options": record.get("options")},
        run_id=str(checkpoint["run_id"]),
        extra={"inputs": inputs, "preset": config.data.preset if config.data else None},
    )
    rundir.event("registered", name=meta.name, version=meta.version, registry=registry.url)
    return {"name": meta.name, "version": meta.version, "registry": registry.url, "stage": config.register.stage}


def _plot(trials: Sequence[Mapping[str, Any]], path: Path, title: str) -> str | None:
    """Score over candidates: every inner candidate an optimizer reported (small dots), each trial's dev score
    (large markers) and the best dev score so far (step line)."""
    finished = [t for t in trials if t.get("status") == "finished"]
    if not finished:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = 0
    xs: list[int] = []
    ys: list[float] = []
    for trial in finished:
        inner = trial.get("candidate_scores") or []
        if inner:
            ax.scatter(range(x, x + len(inner)), inner, s=12, color="0.6")
            x += len(inner)
        ax.scatter([x], [trial["score"]], s=60, zorder=3)
        ax.annotate(str(trial["name"]), (x, trial["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        xs.append(x)
        ys.append(float(trial["score"]))
        x += 1
    best = [max(ys[: i + 1]) for i in range(len(ys))]
    ax.step(xs, best, where="post", color="black", linewidth=1, label="best dev score so far")
    ax.set_xlabel("candidate")
    ax.set_ylabel("dev score")
    ax.set_title(f"{title}: score over candidates")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
