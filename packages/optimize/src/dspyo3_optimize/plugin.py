"""The ``optimize`` plugin of dspyo3: the built-in optimizers and the ``dspyo3 optimize`` / ``dspyo3 registry``
command groups."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dspyo3_core.commands import echo_json
from dspyo3_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from dspyo3_core.registry import OptimizerSpec


@hookimpl
def dspyo3_register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    """Register DSPy's optimizers (BootstrapFewShot, random search, MIPROv2, COPRO, SIMBA, GEPA)."""
    from dspyo3_optimize.optimizers import BUILTIN

    for spec in BUILTIN:
        register(spec)


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add ``dspyo3 optimize`` and ``dspyo3 registry``."""
    cli.add_command(optimize_group)
    cli.add_command(registry_group)


@hookimpl
def dspyo3_resolve_program(reference: str, options: dict[str, Any]) -> Any:
    """Resolve ``registry:NAME@REF`` / ``NAME@REF`` to a program of the registry (what ``dspyo3 serve`` serves);
    None for any other reference."""
    from dspyo3_optimize.programs.source import resolve_reference

    return resolve_reference(reference, options)


class CommandFailure(click.ClickException):
    """A command could not do its job because of its input or environment: one ``Error:`` line, exit status 1, no
    traceback (exit status 2 is for a command line click cannot parse or a malformed option value)."""


class CompareError(CommandFailure):
    """The comparison could not be made (exit status 1, like a failed gate; the message says which)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as a clean message (exit status 1, no traceback): this package's own errors for bad
    configuration, data, registry problems, uncomparable scores and the executors' "needs Ray". Anything else
    (a KeyError in a metric, a bug in a program factory) keeps its traceback."""
    from dspyo3_core.config import ConfigError
    from dspyo3_optimize.data import DataError
    from dspyo3_optimize.evaluate import ExecutorUnavailable
    from dspyo3_optimize.registry import RegistryError
    from dspyo3_optimize.runner import RunError
    from dspyo3_optimize.stats import StatsError

    return (ConfigError, DataError, RegistryError, RunError, StatsError, ExecutorUnavailable)


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


# -- dspyo3 optimize -----------------------------------------------------------------------------------------------


@click.group("optimize")
def optimize_group() -> None:
    """Optimizer runs with checkpoints, evaluation and statistical comparison of registered programs."""


@optimize_group.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Ignore (and replace) the run directory's checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
def optimize_run(config: str, fresh: bool, progress: bool, as_json: bool) -> None:
    """Run (or resume) the optimizer trials described by CONFIG (a TOML file)."""
    import contextlib
    import sys

    from dspyo3_core.cli import library_verbosity

    # DSPy's own bars (bootstrap, evaluation) would fight the run's bar: only with -v (and never with --no-progress);
    # tqdm reads TQDM_* once, when it is imported
    if (not progress or library_verbosity() == 0) and "tqdm" not in sys.modules:
        os.environ["TQDM_DISABLE"] = "1"
    from dspyo3_optimize.runner import RunConfig, run

    try:
        # optimizers print their own chatter: on stderr with -v, else dropped; stdout is for the report (JSON stays
        # parseable)

        chatter = sys.stderr if library_verbosity() > 0 else open(os.devnull, "w")  # noqa: SIM115
        with contextlib.redirect_stdout(chatter), contextlib.closing(chatter) if chatter is not sys.stderr \
                else contextlib.nullcontext():
            report = run(RunConfig.from_toml(config), resume=not fresh, progress=progress)
    except _user_errors() as exc:
        raise CommandFailure(_message(exc)) from None
    if as_json:
        echo_json(report.to_dict())
        _fail_if_nothing_worked(report)
        return
    click.echo(f"run {report.run_id}: {report.status}")
    for trial in report.trials:
        score = f"{trial['score']:.4f} [{trial['ci_low']:.3f}, {trial['ci_high']:.3f}]" if "score" in trial else "-"
        click.echo(f"  #{trial['index']} {trial['name']:<28} {trial['status']:<12} {score}")
    if report.resumed_trials:
        click.echo(f"resumed from checkpoint: trials {report.resumed_trials} were not re-run")
    if report.best_trial is not None:
        click.echo(f"best: trial #{report.best_trial} ({report.best_score:.4f})")
    if report.registered:
        click.echo(f"registered {report.registered['name']} {report.registered['version']} in "
                   f"{report.registered['registry']}")
    click.echo(f"report: {report.report_path}" + (f", plot: {report.plot_path}" if report.plot_path else ""))
    _fail_if_nothing_worked(report)


def _fail_if_nothing_worked(report: Any) -> None:
    """Exit status 1 with the run's one-line reason when every trial failed (the report is written already)."""
    if report.error:
        raise click.ClickException(report.error)


@optimize_group.command("optimizers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def optimize_optimizers(as_json: bool) -> None:
    """List the optimizers installed plugins registered."""
    from dspyo3_optimize.optimizers import optimizer_registry

    optimizers = optimizer_registry()
    rows = [{"name": s.name, "distribution": optimizers.distribution_of(s.name), "description": s.description}
            for s in sorted(optimizers, key=lambda s: s.name)]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']:<26} {row['description']}  [{row['distribution']}]")


def _data_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
                     help="Dataset file (.jsonl, .json or .csv)."),
        click.option("--preset", default=None, help="Dataset layout (gsm8k); default: the one recorded at "
                     "registration."),
        click.option("--inputs", default=None, help="Comma-separated input fields (default: from the preset or "
                     "the registration)."),
        click.option("--limit", type=int, default=None, help="Use the first N rows."),
        click.option("--metric", default=None, help="Metric name or import path (default: the one recorded)."),
        click.option("--registry", "registry_url", default=None, help="Registry directory or URL."),
        click.option("--lm", "profile", default=None, help="LM profile (default: the default profile)."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
                     help="Where to run the program (default: [optimize] executor)."),
        click.option("--concurrency", type=int, default=None, help="Calls in flight."),
        click.option("--program", default=None, help="module:attr of the program (a dspy.Module or a factory) to "
                     "load the versions into; default: the factory recorded at registration, if trusted."),
        click.option("--trust-registry", is_flag=True, help="Import and call whatever factory the registry's "
                     "metadata records (only for registries nobody else can write to)."),
    ]):
        fn = option(fn)
    return fn


def _evaluate_refs(refs: list[str], *, data: str, preset: str | None, inputs: str | None, limit: int | None,
                   metric: str | None, registry_url: str | None, profile: str | None, executor: str | None,
                   concurrency: int | None, program: str | None = None,
                   trust_registry: bool = False) -> list[tuple[Any, Any]]:
    """Evaluate each registry reference on the same examples; returns ``(EvalResult, ProgramVersion)`` pairs.

    The dataset layout (preset or input fields) and the metric default to what the first version that records
    them was registered with."""
    from dspyo3_core.config import build_lm, load_settings
    from dspyo3_optimize.data import load_examples
    from dspyo3_optimize.evaluate import evaluate
    from dspyo3_optimize.registry import open_registry
    from dspyo3_optimize.settings import optimize_settings

    settings = optimize_settings()
    program_registry = open_registry(registry_url, trust_registry=trust_registry)
    metas = [program_registry.meta(*_split_ref(ref)) for ref in refs]
    the_preset = preset or next((m.extra["preset"] for m in metas if m.extra.get("preset")), None)
    the_inputs = inputs.split(",") if inputs else (
        None if the_preset else next((m.extra["inputs"] for m in metas if m.extra.get("inputs")), None))
    examples = load_examples(data, inputs=the_inputs, preset=the_preset, limit=limit)
    the_metric = metric or next((m.metric for m in metas if m.metric), None)
    if not the_metric:
        raise click.UsageError(f"{', '.join(refs)} record no metric; pass --metric")
    lm = build_lm(load_settings().profile(profile))
    out = []
    for meta in metas:
        loaded = program_registry.load(meta.name, meta.version, program)
        result = evaluate(loaded, examples, the_metric, lm=lm, executor=executor or settings.executor,
                          concurrency=concurrency or settings.concurrency)
        out.append((result, meta))
    return out


@optimize_group.command("evaluate")
@click.argument("ref")
@_data_options
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write per-example scores as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def optimize_evaluate(ref: str, out: str | None, as_json: bool, **options: Any) -> None:
    """Evaluate registry version REF (NAME, NAME@VERSION or NAME@STAGE) on a dataset.

    Examples that fail score 0; the first one's error is printed on stderr, and the exit status is 1 when every
    example failed."""
    from dspyo3_optimize.common import error_fix

    try:
        [(result, meta)] = _evaluate_refs([ref], **options)
    except _user_errors() as exc:
        raise CommandFailure(_message(exc)) from None
    first = result.first_error
    summary = {"program": meta.name, "version": meta.version, "metric": result.metric, "n": result.n,
               "mean": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high, "failures": result.failures,
               "first_error": None if first is None else {"index": first[0], "error": first[1]},
               "seconds": result.seconds}
    if out:
        Path(out).write_text(json.dumps({**summary, "scores": result.scores}, indent=2))
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{meta.name} {meta.version}: {result.mean:.4f} [{result.ci_low:.4f}, {result.ci_high:.4f}] on "
                   f"{result.n} examples ({result.failures} failed)")
    if first is None:
        return
    index, reason = first
    if result.failures == result.n:
        raise click.ClickException(f"all {result.n} examples failed; the first (#{index}): {reason}; "
                                   f"{error_fix(reason, options.get('profile'))}")
    click.echo(f"warning: {result.failures} of {result.n} examples failed and score 0; the first (#{index}): "
               f"{reason}", err=True)


@optimize_group.command("compare")
@click.argument("a")
@click.argument("b")
@_data_options
@click.option("--gate", default=None, help='Quality gate, e.g. "delta>0.02,p<0.05"; exit 1 when not met.')
@click.option("--test", "test", type=click.Choice(["auto", "mcnemar", "t", "wilcoxon"]), default="auto",
              show_default=True, help="Significance test (auto: McNemar for 0/1 scores, else paired t).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def optimize_compare(a: str, b: str, gate: str | None, test: str, as_json: bool, **options: Any) -> None:
    """Compare registry versions A and B on the same examples: paired bootstrap interval of B - A and a paired
    significance test. With --gate, exit status 1 when any condition fails (for CI pipelines)."""
    from dspyo3_optimize.stats import check_gates, compare, parse_gates

    try:
        gates = parse_gates(gate) if gate else []
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gate") from None
    try:
        (result_a, meta_a), (result_b, meta_b) = _evaluate_refs([a, b], **options)
        comparison = compare(result_a.scores, result_b.scores, test=test,  # type: ignore[arg-type]
                             errors_a=result_a.failures, errors_b=result_b.failures)
    except _user_errors() as exc:
        raise CompareError(_message(exc)) from None
    for label, result in (("A", result_a), ("B", result_b)):
        first = result.first_error
        if first is not None and result.failures == result.n:  # nothing was measured: no gate can hold
            from dspyo3_optimize.common import error_fix

            raise CompareError(f"every example of {label} failed ({result.n}), so nothing was compared; the first "
                               f"(#{first[0]}): {first[1]}; {error_fix(first[1], options.get('profile'))}")
    outcomes = check_gates(comparison, gates) if gates else []
    passed = all(o.passed for o in outcomes)
    if as_json:
        echo_json({"a": f"{meta_a.name}@{meta_a.version}", "b": f"{meta_b.name}@{meta_b.version}",
                    **comparison.to_dict(),
                    "gates": [{"gate": str(o.gate), "value": o.value, "passed": o.passed} for o in outcomes],
                    "passed": passed})
    else:
        click.echo(f"A = {meta_a.name}@{meta_a.version}: {comparison.mean_a:.4f}   "
                   f"B = {meta_b.name}@{meta_b.version}: {comparison.mean_b:.4f}   (n={comparison.n})")
        click.echo(f"delta (B - A) = {comparison.delta:+.4f}, {comparison.confidence:.0%} paired bootstrap CI "
                   f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]")
        click.echo(f"{comparison.test}: statistic {comparison.statistic:.4g}, p = {comparison.p_value:.4g}"
                   + (f" ({comparison.note})" if comparison.note else ""))
        click.echo(f"errors: A {comparison.errors_a}, B {comparison.errors_b} of {comparison.n} examples (an "
                   "example that raised scores 0)")
        for outcome in outcomes:
            click.echo(f"gate {outcome}")
    if not passed:
        raise click.exceptions.Exit(1)


# -- dspyo3 registry -----------------------------------------------------------------------------------------------


@click.group("registry")
@click.option("--registry", "registry_url", default=None, envvar="DSPYO3_REGISTRY",
              help="Registry directory or URL (redis://..., s3://...); default: [optimize] registry.")
@click.pass_context
def registry_group(ctx: click.Context, registry_url: str | None) -> None:
    """Versioned registry of compiled DSPy programs (stages dev, staging, prod)."""
    ctx.obj = registry_url


def _program_registry(ctx: click.Context) -> Any:
    from dspyo3_optimize.registry import open_registry

    return open_registry(ctx.obj)


def _registry_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dspyo3_optimize.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from None
        except _user_errors() as exc:  # e.g. a bad [optimize] table
            raise CommandFailure(_message(exc)) from None

    return wrapper


@registry_group.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_registry_errors
def registry_list(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List programs, or the versions of NAME with their stages and scores.

    Exit status 1 when there is no registry at the chosen path or URL (an empty registry lists nothing and exits
    0), or when NAME has no versions."""
    from dspyo3_optimize.registry import NotFoundError

    program_registry = _program_registry(ctx)
    if name is None:
        rows: list[dict[str, Any]] = [{"name": n, "versions": len(program_registry.versions(n)),
                                       "stages": program_registry.stages(n)} for n in program_registry.names()]
        if not rows:
            _require_registry(program_registry)
        if as_json:
            echo_json(rows)
        elif not rows:
            click.echo(f"registry {program_registry.url} is empty: no program registered yet")
        else:
            for row in rows:
                stages = " ".join(f"{k}={v}" for k, v in sorted(row["stages"].items()))
                click.echo(f"{row['name']:<30} {row['versions']:>3} version(s)  {stages}")
        return
    versions = program_registry.versions(name)
    if not versions:
        _require_registry(program_registry)
        known = program_registry.names()
        raise NotFoundError(f"no program {name!r} in the registry {program_registry.url}; "
                            + (f"programs: {', '.join(known)}" if known else "it is empty"))
    stages = program_registry.stages(name)
    rows = []
    for version in versions:
        meta = program_registry.meta(name, version)
        dev = meta.scores.get("dev")
        rows.append({"version": version, "stages": sorted(s for s, v in stages.items() if v == version),
                     "created_at": meta.created_at, "parent": meta.parent,
                     "score": None if dev is None else dev.value,
                     "optimizer": (meta.optimizer or {}).get("name")})
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        click.echo(f"{row['version']:<10} {','.join(row['stages']):<18} {score:>8}  {row['optimizer'] or '-':<24} "
                   f"{row['created_at']}")


def _require_registry(program_registry: Any) -> None:
    """Raise when the chosen path or URL holds no registry at all, saying how to point at the right one."""
    from dspyo3_optimize.registry import RegistryError

    if program_registry.exists():
        return
    where = program_registry.url
    if "://" not in where:
        where = str(Path(where).expanduser().resolve())
    raise RegistryError(f"no registry at {where}; point at one with --registry PATH|URL (before the command: dspyo3 "
                        "registry --registry PATH list), DSPYO3_REGISTRY=PATH|URL, or registry = \"...\" in the "
                        "[optimize] table of dspyo3.toml")


@registry_group.command("show")
@click.argument("ref")
@click.option("--state", is_flag=True, help="Also print the program's DSPy JSON state.")
@click.pass_context
@_registry_errors
def registry_show(ctx: click.Context, ref: str, state: bool) -> None:
    """Metadata of NAME[@VERSION|@STAGE] as JSON (checksum verified)."""
    program_registry = _program_registry(ctx)
    name, version = _split_ref(ref)
    program_state, meta = program_registry.state(name, version)
    out = meta.to_dict()
    out["stages"] = sorted(s for s, v in program_registry.stages(name).items() if v == meta.version)
    if state:
        out["state"] = program_state
    echo_json(out)


@registry_group.command("diff")
@click.argument("name")
@click.argument("a")
@click.argument("b")
@click.pass_context
@_registry_errors
def registry_diff(ctx: click.Context, name: str, a: str, b: str) -> None:
    """What changed from version (or stage) A to B of NAME: metadata, instructions, demos."""
    echo_json(_program_registry(ctx).diff(name, a, b))


@registry_group.command("promote")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--to", "stage", type=click.Choice(["dev", "staging", "prod"]), default="staging", show_default=True)
@click.pass_context
@_registry_errors
def registry_promote(ctx: click.Context, name: str, version: str | None, stage: str) -> None:
    """Point STAGE at VERSION of NAME (default: the version in the stage below)."""
    promoted = _program_registry(ctx).promote(name, version, to=stage)
    click.echo(f"{name}: {stage} -> {promoted}")


@registry_group.command("rollback")
@click.argument("name")
@click.option("--stage", type=click.Choice(["dev", "staging", "prod"]), default="prod", show_default=True)
@click.pass_context
@_registry_errors
def registry_rollback(ctx: click.Context, name: str, stage: str) -> None:
    """Put STAGE of NAME back to the version it held before its last promotion."""
    version = _program_registry(ctx).rollback(name, stage)
    click.echo(f"{name}: {stage} rolled back to {version}")


@registry_group.command("verify")
@click.argument("name", required=False)
@click.pass_context
@_registry_errors
def registry_verify(ctx: click.Context, name: str | None) -> None:
    """Check the checksum of every stored version (exit 1 on any problem)."""
    program_registry = _program_registry(ctx)
    problems = [p for n in ([name] if name else program_registry.names()) for p in program_registry.verify(n)]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("all artifacts match their checksums")
