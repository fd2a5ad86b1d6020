"""The ``dspyo3 serve`` command: serve DSPy programs over HTTP with uvicorn (one or more worker processes) or as a
Ray Serve application, and ``dspyo3 serve hash-key`` for tenant keys.

Every target is resolved and its current version loaded before the server starts, so a wrong target is one
``Error:`` line (exit 1) instead of workers failing one by one. The worker processes build the app from the
:class:`~dspyo3_production.serve.config.ServeConfig` this command passes them as JSON in an environment variable
(see :func:`dspyo3_production.serve.app.app_from_environment`).

Only click is imported when the CLI starts; uvicorn, Starlette, DSPy and Ray are imported inside the command.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dspyo3_production.serve.config import ServeConfig

__all__ = ["serve_group"]

_FORMS = "module:attr, module:factory=saved.json, NAME@VERSION or registry:NAME@STAGE"


class _ServeGroup(click.Group):
    """``dspyo3 serve TARGET...`` runs the server; ``dspyo3 serve hash-key`` runs the sub-command. A first argument
    that names a sub-command selects it; anything else is the server's options and targets."""

    allow_interspersed_args = True  # dspyo3 serve mod:qa --port 8001

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            click.Command.parse_args(self, ctx, [])  # the server's options keep their defaults
            # what click.Group.parse_args records for the sub-command it is about to invoke
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["[OPTIONS] TARGET...", "|", "hash-key"]


def _uvicorn_available() -> None:
    missing = [name for name in ("uvicorn", "starlette") if _find(name) is None]
    if missing:
        from dspyo3_core.failures import install_advice

        raise click.ClickException(f"dspyo3 serve needs {' and '.join(missing)}: "
                                   f"{install_advice('dspyo3-production', 'serve')}")


def _find(name: str) -> Any:
    import importlib.util

    return importlib.util.find_spec(name)


def build_config(targets: Sequence[str], *, config_file: str | None = None, **overrides: Any) -> ServeConfig:
    """The :class:`ServeConfig` of the command line: ``[serve]`` of the settings (``config_file`` if given, which
    then also becomes ``DSPYO3_CONFIG`` for the worker processes), command-line values on top, ``targets``
    replacing ``[[serve.programs]]`` when any are given.

    Raises:
        click.ClickException: the config file does not exist, or a value in it is wrong.
        click.UsageError: there is no program to serve.
    """
    from dspyo3_core.config import ConfigError, load_settings
    from dspyo3_production.serve.config import ProgramConfig, serve_config

    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise click.ClickException(f"no config file {config_file}; check the path given to --config")
        os.environ["DSPYO3_CONFIG"] = str(path.resolve())
    programs = tuple(ProgramConfig(target) for target in targets) if targets else None
    try:
        config = serve_config(load_settings(), programs=programs, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not config.programs:
        raise click.UsageError(f"no program to serve: name a TARGET ({_FORMS}) or add [[serve.programs]] with a "
                               "target to dspyo3.toml")
    return config


def check_targets(config: ServeConfig, *, registry: str | None = None, trust_registry: bool = False,
                  plugin_manager: Any = None) -> list[str]:
    """Resolve every target of ``config`` (and its A/B target) and load its current version, so a target that
    cannot be served fails now. Returns the URL names of the programs.

    Raises:
        click.ClickException: a target cannot be resolved or loaded (the message names it and the fix), or two
            targets would be served under one name.
    """
    from dspyo3_core.sources import ProgramSourceError
    from dspyo3_production.serve.targets import resolve_target

    names: list[str] = []
    for program in config.programs:
        for target in (program.target, *((program.ab.target,) if program.ab is not None else ())):
            try:
                source = resolve_target(target, registry=registry, trust_registry=trust_registry,
                                        plugin_manager=plugin_manager)
                source.load(source.current())
            except ProgramSourceError as exc:
                raise click.ClickException(str(exc)) from None
            if target == program.target:
                names.append(program.name or str(source.name))
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise click.ClickException(f"two targets would both be served as {', '.join(duplicates)}; give one a "
                                   "name: NAME=TARGET on the command line or name = \"...\" in [[serve.programs]]")
    return names


def _exit_0(signum: int, frame: Any) -> None:
    raise SystemExit(0)


@contextmanager
def _quiet_stop() -> Iterator[None]:
    """SIGTERM and SIGINT stop the server gracefully, with exit status 0. While uvicorn serves, its own handlers
    take the signal (stop accepting, drain); these run only outside that time: when uvicorn, once drained, raises
    the signal again, and when the signal comes before uvicorn is listening (nothing to drain yet)."""
    import threading

    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (and uvicorn handles Windows itself)
        return
    saved = {sig: signal.signal(sig, _exit_0) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run_uvicorn(config: ServeConfig, environment: dict[str, str]) -> None:
    import uvicorn

    os.environ.update(environment)  # the worker processes inherit it
    uvicorn.run("dspyo3_production.serve.app:app_from_environment", factory=True, host=config.host,
                port=config.port, workers=config.workers if config.workers > 1 else None, loop="uvloop",
                http="httptools", log_level="warning", timeout_graceful_shutdown=math.ceil(config.request_timeout))


def _run_ray(config: ServeConfig, environment: dict[str, str], replicas: int, registry: str | None,
             trust_registry: bool) -> None:
    import threading

    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise click.ClickException("dspyo3 serve --ray needs Ray Serve: pip install 'ray[serve]>=2.40'") from None
    from dspyo3_production.serve.ray import deployment

    serve: Any = ray_serve  # parts of Ray Serve's API are untyped
    started = False
    if not ray.is_initialized():
        # a local instance started here inherits this environment: the current directory stays importable for
        # module:attr targets, and the LM and config settings reach the replicas
        cwd = str(Path.cwd())
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if cwd not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *paths])
        os.environ.update(environment)
        ray.init(include_dashboard=False, log_to_driver=False)
        started = True
    stop = threading.Event()
    saved = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        app = deployment(config, num_replicas=replicas, registry=registry, trust_registry=trust_registry)
        serve.run(app, name="dspyo3", route_prefix="/", blocking=False)
        click.echo(f"dspyo3 serve: Ray Serve ({replicas} replica{'s' if replicas != 1 else ''}) listening on "
                   f"http://{_display(config.host)}:{config.port}", err=True)
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        serve.shutdown()
        if started:
            ray.shutdown()


def check_listen(host: str, port: int) -> None:
    """Fail with one line now if ``host:port`` cannot be listened on (in use, or not an address of this machine),
    rather than after the server has started loading. The probe socket is closed again before the server binds.

    Raises:
        click.ClickException: the address cannot be bound; the message says which and what to do.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass --host an address "
                                   "of this machine (127.0.0.1, 0.0.0.0, ::)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {_display(host)}:{port}: {exc.strerror or exc}; stop what "
                                       "listens there or choose another --port / --host") from None


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _environment(config: ServeConfig, registry: str | None, trust_registry: bool) -> dict[str, str]:
    from dspyo3_production.serve.app import config_to_env

    return dict(config_to_env(config, registry=registry, trust_registry=trust_registry))


@click.group("serve", cls=_ServeGroup, invoke_without_command=True)
@click.argument("targets", nargs=-1, metavar="TARGET...")
@click.option("--host", default=None, help="Address to bind [default: [serve] host or 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on [default: [serve] port or 8000].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: [serve] workers or 1]; they share cache, limits and budgets only "
                   "through Redis ([redis] url).")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="The dspyo3.toml to read ([serve], [lm], [production], ...) [default: ./dspyo3.toml or "
                   "$DSPYO3_CONFIG].")
@click.option("--registry", "registry_url", default=None, envvar="DSPYO3_REGISTRY",
              help="Registry directory or URL for NAME@REF targets [default: the configured one].")
@click.option("--trust-registry", is_flag=True,
              help="Let the registry import the program factory its metadata records (only for a registry "
                   "nobody else can write to).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Requests running at once per program and worker [default: [serve] max_in_flight or 64].")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Seconds per request before 504; also how long SIGTERM waits for requests in flight "
                   "[default: [serve] request_timeout or 30].")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run as a Ray Serve application on the Ray cluster ray.init() finds (RAY_ADDRESS, a `ray start` "
                   "cluster on this machine), else on a new local Ray instance.")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Ray Serve replicas (with --ray) [default: 2].")
@click.pass_context
def serve_group(ctx: click.Context, targets: tuple[str, ...], host: str | None, port: int | None,
                workers: int | None, config_file: str | None, registry_url: str | None, trust_registry: bool,
                max_in_flight: int | None, request_timeout: float | None, use_ray: bool,
                replicas: int | None) -> None:
    """Serve DSPy programs over HTTP: POST /v1/programs/NAME, /stream, /batch; /openapi.json, /docs, /healthz,
    /readyz, /metrics.

    TARGET is module:attr (a dspy.Module or a factory; the current directory is importable),
    module:factory=saved.json, NAME@VERSION or registry:NAME@STAGE (a stage is followed: promote and rollback
    switch the served version), optionally NAME=TARGET to choose the URL name. Without TARGETs the
    [[serve.programs]] of dspyo3.toml are served.

    SIGTERM (or Ctrl-C) stops accepting connections, lets requests in flight finish (up to --request-timeout),
    then exits 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    if "hash-key" in targets:
        raise click.UsageError("hash-key is a sub-command of its own: dspyo3 serve hash-key < key.txt")
    if replicas is not None and not use_ray:
        raise click.UsageError("--replicas is for Ray Serve; add --ray (or use --workers for processes)")
    if use_ray and workers is not None:
        raise click.UsageError("--workers is for uvicorn processes; with --ray use --replicas")
    if not use_ray:
        _uvicorn_available()
    with _quiet_stop():  # SIGTERM while the programs load stops the command too, with exit status 0
        _serve(ctx, targets, config_file, registry_url, trust_registry, use_ray, replicas, host=host, port=port,
               workers=workers, max_in_flight=max_in_flight, request_timeout=request_timeout)


def _serve(ctx: click.Context, targets: tuple[str, ...], config_file: str | None, registry_url: str | None,
           trust_registry: bool, use_ray: bool, replicas: int | None, **overrides: Any) -> None:
    config = build_config(targets, config_file=config_file, **overrides)
    check_listen(config.host, config.port)
    names = check_targets(config, registry=registry_url, trust_registry=trust_registry,
                          plugin_manager=ctx.obj if ctx.obj is not None and hasattr(ctx.obj, "hook") else None)
    environment = _environment(config, registry_url, trust_registry)
    if use_ray:
        _run_ray(config, environment, replicas or 2, registry_url, trust_registry)
        return
    workers_text = f"{config.workers} worker{'s' if config.workers != 1 else ''}"
    click.echo(f"dspyo3 serve: listening on http://{_display(config.host)}:{config.port} ({workers_text}; "
               f"programs: {', '.join(names)})", err=True)
    _run_uvicorn(config, environment)


@serve_group.command("hash-key")
def hash_key_command() -> None:
    """Print the SHA-256 of an API key read from stdin, for key_sha256 in [[serve.tenants]].

    The key is read from stdin (never from the command line, where shell history and ps would show it):
    printf %s "$KEY" | dspyo3 serve hash-key. On a terminal it is asked for without echo.
    """
    from dspyo3_production.serve.tenants import hash_key

    if sys.stdin is None:
        raise click.ClickException("no stdin to read the key from; pipe it: printf %s \"$KEY\" | dspyo3 serve "
                                   "hash-key")
    if sys.stdin.isatty():
        key = click.prompt("API key", hide_input=True, err=True, default="", show_default=False)
    else:
        key = sys.stdin.read()
    if not key.strip():
        raise click.ClickException("no key on stdin; pipe it: printf %s \"$KEY\" | dspyo3 serve hash-key")
    if "\n" in key.strip():
        raise click.ClickException("stdin holds more than one line; give one key at a time")
    click.echo(hash_key(key))
