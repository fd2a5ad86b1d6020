"""The ``agents`` plugin of dspyo3: the built-in tools (``dspyo3_register_tools``) and the ``dspyo3 agents``
command group (``tools list|call``, ``run``, ``trace``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dspyo3_core import hookimpl
from dspyo3_core.registry import ToolSpec


@hookimpl
def dspyo3_register_tools(register: Callable[[ToolSpec], None]) -> None:
    """Register the built-in tools (risky ones are tagged and start disabled)."""
    from dspyo3_agents.builtin import BUILTIN_TOOLS
    from dspyo3_agents.tools import parse_docstring

    for func in BUILTIN_TOOLS:
        register(ToolSpec(func.__name__, func, parse_docstring(func.__doc__)[0]))


def _tool_registry(enable: tuple[str, ...]) -> Any:
    from dspyo3_agents.tools import ToolRegistry, UnknownToolError

    try:
        return ToolRegistry.from_plugins(enable=enable)
    except UnknownToolError as exc:  # a name that exists nowhere: a failure (1), like an unknown profile or program
        raise click.ClickException(str(exc)) from None


def _json_default(value: Any) -> Any:
    from dspyo3_agents.trajectory import jsonable

    return jsonable(value)


@click.group("agents")
def agents_group() -> None:
    """ReAct agents over registry tools: list and call tools, run an agent, read trajectories."""


@agents_group.group("tools")
def tools_group() -> None:
    """The tools installed plugins contribute."""


@tools_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include disabled tools (code, files, network, MCP).")
@click.option("--tag", "tags", multiple=True, help="Only tools with this tag (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (name, description, parameters schema, ...).")
def tools_list(show_all: bool, tags: tuple[str, ...], as_json: bool) -> None:
    """List tools: name, enabled, tags, arguments, source."""
    registry = _tool_registry(())
    tools = [t for t in registry.tools(include_disabled=True)
             if (show_all or t.enabled) and (not tags or t.tags & set(tags))]
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in tools], indent=2, default=_json_default))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="dspyo3 agent tools")
    for column in ("name", "enabled", "tags", "arguments", "timeout", "source", "description"):
        table.add_column(column, overflow="fold")
    for tool in tools:
        table.add_row(*(Text(cell) for cell in (
            tool.name, "yes" if tool.enabled else "no (enable by name)", ", ".join(sorted(tool.tags)),
            tool.expected(), "-" if tool.timeout is None else f"{tool.timeout:g}s", tool.source,
            tool.description.splitlines()[0] if tool.description else "")))
    Console(width=160).print(table)


@tools_group.command("call")
@click.argument("name")
@click.option("--args", "raw_args", default="{}", show_default=True, help="Arguments as a JSON object.")
@click.option("--enable", is_flag=True, help="Enable the tool for this call if it is disabled by default.")
def tools_call(name: str, raw_args: str, enable: bool) -> None:
    """Call tool NAME with --args JSON and print its result as JSON."""
    from dspyo3_agents.tools import ToolError

    try:
        args = json.loads(raw_args)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--args is not JSON ({exc}); pass an object such as '{{\"a\": 1}}'") from None
    registry = _tool_registry(())
    try:
        if enable:
            registry.enable(name)
        result = registry.call(name, args)
    except ToolError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, default=_json_default, ensure_ascii=False))


@agents_group.command("run")
@click.argument("task")
@click.option("--signature", default="question -> answer", show_default=True,
              help="The agent's signature; TASK is its first input field.")
@click.option("--tool", "tools", multiple=True, help="Grant only these tools (repeatable; default: every enabled one).")
@click.option("--tag", "tags", multiple=True, help="Grant the tools with this tag (repeatable).")
@click.option("--enable", multiple=True, help="Enable a tool that is disabled by default (repeatable).")
@click.option("--max-steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--state", "state_url", default=None,
              help="Save the run after every step: sqlite:///path.db, redis://host:port/0.")
@click.option("--run-id", default=None, help="Run id; with --state, an existing run resumes.")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append the trajectory to this JSONL file.")
@click.option("--profile", default=None, help="LM profile (default: the configured default, or DSPYO3_LM).")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs, run id, stop reason and steps as JSON.")
def run_command(task: str, signature: str, tools: tuple[str, ...], tags: tuple[str, ...], enable: tuple[str, ...],
                max_steps: int, max_seconds: float | None, state_url: str | None, run_id: str | None,
                trace_path: Path | None, profile: str | None, as_json: bool) -> None:
    """Run a ReAct agent on TASK with the configured LM and the installed tools."""
    import dspy

    from dspyo3_agents.agent import ReActAgent
    from dspyo3_agents.state import open_store
    from dspyo3_agents.tools import UnknownToolError
    from dspyo3_core.config import ConfigError, build_lm, load_settings

    try:
        lm = build_lm(load_settings().profile(profile))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    registry = _tool_registry(enable)
    try:
        store = open_store(state_url) if state_url else None
        agent = ReActAgent(signature, registry, tools=list(tools) or None, tags=list(tags) or None,
                           max_steps=max_steps, max_seconds=max_seconds, store=store, trajectory=trace_path)
    except UnknownToolError as exc:  # a tool that exists nowhere: a failure (1), as in `tools call`
        raise click.ClickException(str(exc)) from None
    except (ValueError, KeyError) as exc:  # a malformed --signature, --max-steps ...: the command line is wrong
        raise click.UsageError(str(exc)) from None
    first = next(iter(agent.signature.input_fields))
    with dspy.context(lm=lm):
        result = agent(**{first: task}, run_id=run_id)
    outputs = {k: result[k] for k in agent.signature.output_fields}
    calls = [step for step in result.steps if step.tool not in ("", "finish")]
    failed = [step for step in calls if step.error]
    # every tool call failed and the "answer" is empty, the task itself or an error message: no answer at all
    unanswered = bool(calls) and len(failed) == len(calls) and not _has_answer(outputs, task, failed)
    if as_json:
        click.echo(json.dumps({"outputs": outputs, "run_id": result.run_id, "stopped": result.stopped,
                               "tokens": result.tokens, "steps": [s.to_dict() for s in result.steps]},
                              default=_json_default, ensure_ascii=False))
        for step in failed:
            click.echo(_failed_call(step), err=True)
    else:
        for step in result.steps:
            click.echo(_failed_call(step) if step in failed else f"[{step.index}] {step.tool}("
                       f"{json.dumps(step.args, default=_json_default)}) -> {str(step.observation)[:200]}", err=True)
        if not (unanswered and result.stopped == "finish"):
            for key, value in outputs.items():
                click.echo(value if len(outputs) == 1 else f"{key}: {value}")
        click.echo(f"run {result.run_id}: {len(result.steps)} steps, stopped by {result.stopped}", err=True)
    if unanswered and result.stopped == "finish":
        reason = _one_line(str(failed[0].observation)).removeprefix("Error: ")
        args = _one_line(json.dumps(failed[0].args, default=_json_default, ensure_ascii=False), 200)
        raise click.ClickException(f"the agent finished without an answer: every tool call failed (first: "
                                   f"{reason}); try the call alone with `dspyo3 agents tools call {failed[0].tool} "
                                   f"--args '{args}'`, or grant other tools (--tool)")
    if result.stopped != "finish":  # ran out of steps, time or context: the answer is a guess, not a result
        fix = {"max_steps": f"raise --max-steps (was {max_steps})", "max_seconds": "raise --max-seconds",
               "context_window": "use a model with a longer context, or fewer tools"}.get(str(result.stopped), "")
        resume = f" or resume it with --run-id {result.run_id} --state {state_url}" if state_url else ""
        raise click.ClickException(f"the agent stopped ({result.stopped}) before it finished the task; {fix}{resume}")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _failed_call(step: Any) -> str:
    """One stderr line for a failed tool call: which step, tool and arguments, and the error."""
    args = json.dumps(step.args, default=_json_default, ensure_ascii=False)
    return (f"[{step.index}] tool call failed: {step.tool}({_one_line(args, 200)}): "
            f"{_one_line(str(step.observation)).removeprefix('Error: ')}")


def _has_answer(outputs: dict[str, Any], task: str, failed: list[Any]) -> bool:
    """Some output holds more than nothing, the task itself, or a failed call's error message."""
    errors = [" ".join(str(step.observation).split()) for step in failed]
    for value in outputs.values():
        text = " ".join(str(value if value is not None else "").split())
        if text and text != " ".join(task.split()) and not any(text in error or error in text for error in errors):
            return True
    return False


@agents_group.command("trace")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", default=None, help="Only this run id.")
@click.option("--json", "as_json", is_flag=True, help="Print the events as a JSON array.")
def trace_command(path: Path, run_id: str | None, as_json: bool) -> None:
    """Show the trajectory JSONL file PATH as a table (one row per step)."""
    from dspyo3_agents.trajectory import read_trajectory

    try:
        events = [e for e in read_trajectory(path) if run_id is None or e.get("run_id") == run_id]
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(events, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console(width=180)
    runs: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        runs.setdefault(str(event.get("run_id")), []).append(event)
    if not runs:
        console.print(f"no trajectory events in {path}" + (f" for run {run_id}" if run_id else ""), markup=False)
    for rid, run_events in runs.items():
        start = next((e for e in run_events if e["event"] == "start"), {})
        table = Table(title=escape(f"run {rid} ({start.get('agent', '?')}): "
                                   f"{json.dumps(start.get('inputs', {}), ensure_ascii=False)[:100]}"))
        for column, justify in (("#", "right"), ("thought", "left"), ("tool", "left"), ("args", "left"),
                                ("observation", "left"), ("s", "right"), ("tokens", "right")):
            table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for event in run_events:
            if event["event"] == "step":
                observation = Text(str(event.get("observation"))[:300], style="red" if event.get("error") else "")
                table.add_row(str(event.get("index")), Text(str(event.get("thought", ""))[:120]),
                              Text(str(event.get("tool"))),
                              Text(json.dumps(event.get("args", {}), ensure_ascii=False)[:80]), observation,
                              f"{float(event.get('duration', 0)):.2f}",
                              str((event.get("tokens") or {}).get("total_tokens", "-")))
            elif event["event"] == "resume":
                table.add_row("", Text("resumed after an interruption", style="italic"), "", "", "", "", "")
        console.print(table)
        finish = next((e for e in reversed(run_events) if e["event"] == "finish"), None)
        if finish is not None:
            console.print(f"outputs: {json.dumps(finish.get('outputs'), ensure_ascii=False)[:300]}  stopped: "
                          f"{finish.get('stopped')}  steps: {finish.get('steps')}  seconds: "
                          f"{float(finish.get('seconds', 0)):.2f}  tokens: {finish.get('tokens')}", markup=False)
        else:
            console.print("not finished (interrupted or still running)", markup=False)


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the ``dspyo3 agents`` command group."""
    cli.add_command(agents_group)
