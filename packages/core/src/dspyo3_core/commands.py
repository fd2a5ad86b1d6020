"""Core CLI commands: ``plugins``, ``lm``, ``doctor``, ``inspect`` and ``demo``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from dspyo3_core.config import ConfigError, build_lm, load_settings
from dspyo3_core.plugins import PluginManager, get_plugin_manager


def _manager(ctx: click.Context) -> PluginManager:
    return ctx.find_object(PluginManager) or get_plugin_manager()


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (non-JSON values as their ``str``): every ``--json`` output."""
    click.echo(json.dumps(data, indent=2, default=str))


def _settings() -> Any:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List installed dspyo3 plugins: name, version, hooks and status."""
    from dspyo3_core.textable import render

    infos = _manager(ctx).plugins()
    if as_json:
        echo_json([info.to_dict() for info in infos])
        return
    rows = []
    for info in infos:
        status = info.status if not info.error else f"{info.status}: {info.error}"
        rows.append((info.name, info.distribution or "", info.version or "", status, ", ".join(info.hooks)))
    click.echo(render(("name", "distribution", "version", "status", "hooks"), rows))


@click.group("lm")
def lm_group() -> None:
    """LM profiles: list, show, test, and the providers they can use."""


@lm_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lm_list(ctx: click.Context, as_json: bool) -> None:
    """List configured profiles (keys masked)."""
    from dspyo3_core.textable import render

    settings = _settings()
    providers = _manager(ctx).lm_providers()
    rows = []
    for name in sorted(settings.profiles):
        profile = settings.profiles[name]
        if profile.provider in providers:
            row = profile.describe(providers.get(profile.provider))
        else:
            row = {"name": name, "provider": profile.provider, "model": profile.model, "error": "unknown provider"}
        row["default"] = name == settings.default_profile
        rows.append(row)
    if as_json:
        echo_json({"default": settings.default_profile, "profiles": rows})
        return
    if not rows:
        click.echo("No LM profiles. Set DSPYO3_LM=provider/model (or offline/extractive to try things without a "
                   "model) or add [lm.profiles.NAME] to dspyo3.toml.")
        return
    click.echo(render(("", "name", "provider", "model", "api_base", "key", "source"),
                      [("*" if row["default"] else "", row["name"], row["provider"], row["model"],
                        row.get("api_base") or "", row.get("api_key", ""), row.get("source", "")) for row in rows]))
    note = _default_note(settings.default_profile, sorted(settings.profiles))
    if note:
        click.echo(note, err=True)


def _default_note(default: str | None, names: list[str]) -> str | None:
    """What ``lm list`` says on stderr when commands without ``--profile`` would fail: no default profile, or a
    default that names no profile (``dspyo3 doctor`` fails on the latter)."""
    if default is None:
        return (f"Note: no default profile; commands without --profile will fail. Name one of {', '.join(names)} "
                "in [lm] default in dspyo3.toml, or set DSPYO3_LM.")
    if default not in names:
        return (f"Note: [lm] default names {default!r}, which is not a profile; commands without --profile will "
                f"fail. Name one of {', '.join(names)} there instead.")
    return None


@lm_group.command("show")
@click.argument("profile", required=False)
@click.pass_context
def lm_show(ctx: click.Context, profile: str | None) -> None:
    """Show one profile (the default one without PROFILE) as JSON; the key is masked."""
    settings = _settings()
    try:
        chosen = settings.profile(profile)
        spec = _manager(ctx).lm_providers().get(chosen.provider)
    except (ConfigError, KeyError) as exc:
        raise click.ClickException(str(exc).strip('"')) from None
    echo_json(chosen.describe(spec))


@lm_group.command("providers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lm_providers(ctx: click.Context, as_json: bool) -> None:
    """List LM providers registered by plugins."""
    from rich.console import Console
    from rich.table import Table

    registry = _manager(ctx).lm_providers()
    rows: list[dict[str, Any]] = [
        {"name": spec.name, "route": spec.model_prefix, "key_env": list(spec.key_env),
         "api_base": spec.default_api_base, "needs_api_base": spec.requires_api_base,
         "distribution": registry.distribution_of(spec.name), "description": spec.description}
        for spec in sorted(registry, key=lambda s: s.name)
    ]
    if as_json:
        echo_json(rows)
        return
    table = Table("name", "route", "key variables", "from", "description")
    for row in rows:
        table.add_row(row["name"], row["route"], ", ".join(row["key_env"]), row["distribution"], row["description"])
    Console().print(table)


@lm_group.command("test")
@click.argument("profile", required=False)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lm_test(ctx: click.Context, profile: str | None, timeout: float, as_json: bool) -> None:
    """Send one short request through PROFILE and report latency (exit 1 on failure)."""
    settings = _settings()
    try:
        chosen = settings.profile(profile)
        lm = build_lm(chosen, plugin_manager=_manager(ctx), cache=False, num_retries=0, timeout=timeout)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    key = lm.kwargs.get("api_key")
    started = time.perf_counter()
    try:
        outputs = lm("Reply with the single word OK.", max_tokens=8)
    except Exception as exc:
        from dspyo3_core.failures import describe
        from dspyo3_core.secrets import redact

        message = redact(describe(exc), str(key) if key else None)  # one line: what failed, and the fix
        result = {"profile": chosen.name, "ok": False, "error": message}
        echo_json(result) if as_json else click.echo(f"FAIL {chosen.name}: {result['error']}", err=True)
        ctx.exit(1)
    elapsed = time.perf_counter() - started
    first = outputs[0] if outputs else ""
    text = first.get("text", "") if isinstance(first, dict) else str(first)
    result = {"profile": chosen.name, "ok": True, "model": lm.model, "latency_s": round(elapsed, 3),
              "reply": text[:200]}
    from dspyo3_core.offline import OFFLINE_SHORT_LABEL, OfflineLM

    note = ""
    if isinstance(lm, OfflineLM):  # it answered, but no model did
        result["note"] = OFFLINE_SHORT_LABEL
        note = f", {OFFLINE_SHORT_LABEL}"
    if as_json:
        echo_json(result)
    else:
        click.echo(f"OK {chosen.name} ({lm.model}) in {elapsed:.2f}s{note}: {text[:80]!r}")


@lm_group.command("offline")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on (0: a free one).")
@click.option("--host", type=click.Choice(["127.0.0.1", "::1", "localhost"]), default="127.0.0.1",
              show_default=True, help="Loopback interface to bind.")
def lm_offline(port: int, host: str) -> None:
    """Serve the offline LM (NOT a model) as an OpenAI-compatible endpoint on loopback, until Ctrl-C.

    Prints the api_base on the first line of stdout. Every answer is derived from the prompt itself (see
    DSPYO3_LM=offline/extractive, which needs no server).
    """
    import asyncio

    from dspyo3_core.offline import offline_responder
    from dspyo3_core.testing.server import serve_async

    def ready(api_base: str) -> None:
        click.echo(api_base)
        click.echo(f"offline LM (not a model: answers are copied from the prompt) at {api_base}; use it with\n"
                   f"  DSPYO3_LM=openai-compatible/offline DSPYO3_LM_API_BASE={api_base}\nCtrl-C stops it.",
                   err=True)

    try:
        asyncio.run(serve_async(offline_responder(), host, port, ready=ready))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                                   "(0 = a free one)") from None
    except KeyboardInterrupt:
        pass


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print {\"checks\": [...]} as JSON.")
@click.option("--fix", is_flag=True, help="Apply safe fixes (e.g. create the cache directory) and say what was done.")
@click.pass_context
def doctor_command(ctx: click.Context, as_json: bool, fix: bool) -> None:
    """Check Python, DSPy, dspyo3 packages, the native module, LM profile, Redis and the cache dir."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dspyo3_core.doctor import run_doctor

    report = run_doctor(_manager(ctx), fix=fix, plugin_error=ctx.meta.get("dspyo3.plugin_error"))
    if as_json:
        echo_json(report.to_dict())
    else:
        console = Console()
        for done in report.fixed:
            console.print(f"[green]fixed[/green] {escape(done)}")
        table = Table("check", "status", "detail", "fix")
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in report.checks:
            table.add_row(escape(check.name), f"[{colours[check.status]}]{check.status}[/]", escape(check.detail),
                          escape(check.fix))
        console.print(table)
    if report.failed:
        ctx.exit(1)


@click.command("inspect")
@click.argument("target")
@click.option("--program", help="With a saved .json TARGET: package.module:Class to load the state into.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_command(target: str, program: str | None, as_json: bool) -> None:
    """Describe the predictors of a DSPy program: TARGET is package.module:attribute or a saved .json."""
    from rich.console import Console
    from rich.markup import escape

    from dspyo3_core.inspector import InspectError, inspect_target

    try:
        report = inspect_target(target, program)
    except InspectError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(report)
        return
    console = Console()
    for predictor in report["predictors"]:
        sig = predictor["signature"]
        console.print(f"[bold]{escape(predictor['name'])}[/bold]  demos={predictor['demos']}")
        if sig["instructions"]:
            console.print(escape(f"  instructions: {sig['instructions']}"))
        for role in ("inputs", "outputs", "fields"):
            for field in sig.get(role, []):
                desc = f" — {field['desc']}" if field["desc"] else ""
                console.print(escape(f"  {role[:-1]:6} {field['name']}: {field['type']}{desc}"))
    if report.get("note"):
        console.print(f"[yellow]note:[/yellow] {report['note']}")


@click.command("demo")
@click.option("--n", "limit", default=8, show_default=True, help="Number of GSM8K questions.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.pass_context
def demo_command(ctx: click.Context, limit: int, json_path: str | None) -> None:
    """Run a DSPy program end to end through the plugin core (offline loopback LM unless DSPYO3_LM is set)."""
    from dspyo3_core.demo import run_demo

    run_demo(_manager(ctx), limit=limit, json_path=json_path)


CORE_COMMANDS = (plugins_command, lm_group, doctor_command, inspect_command, demo_command)
