"""The ``dspyo3`` command line. Core's commands and every plugin's come in through ``dspyo3_register_commands``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

import click

from dspyo3_core.config import ConfigError
from dspyo3_core.plugins import PluginError, PluginManager, core_only_manager, get_plugin_manager
from dspyo3_core.registry import DuplicateNameError
from dspyo3_core.secrets import install_redaction, redact

# Problems with the user's setup: reported as one clear line, never as a traceback.
USER_ERRORS = (ConfigError, PluginError, DuplicateNameError)


# command groups of the first-party packages: an unknown one says which package brings it
_GROUP_PACKAGES = {"rag": "rag", "agents": "agents", "optimize": "optimize", "registry": "optimize",
                   "cache": "production", "metrics": "production", "production": "production", "serve": "production",
                   "types": "types"}


class _Root(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            name = args[0] if args else ""
            package = _GROUP_PACKAGES.get(name)
            if package is None or self.get_command(ctx, name) is not None:
                raise
            raise click.UsageError(
                f"No such command {name!r}: it comes with dspyo3-{package}, which is not installed or not loaded; "
                f"pip install dspyo3-{package} (from a checkout: pip install ./packages/{package}), and see "
                "dspyo3 plugins for plugins that failed to load or were disabled", ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


# the libraries whose log lines the CLI keeps quiet unless asked (-v): DSPy's optimizer chatter, its offline
# "model metadata refresh failed" warning, LiteLLM's and httpx's request lines
_LIBRARY_LOGGERS = ("dspy", "LiteLLM", "litellm", "httpx", "httpcore")
_LEVEL = {"level": logging.ERROR, "cli": 0}


class _ApplyAfterImport:
    """Sets the libraries' log level again once DSPy is imported (its import sets its logger to INFO), without
    importing DSPy before a command needs it. (A meta path finder by protocol: ``importlib.abc`` costs start-up.)"""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "dspy":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _apply_level()

        loader.exec_module = exec_module
        return spec


def _apply_level() -> None:
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(_LEVEL["level"])


def library_log_level(verbose: int) -> None:
    """What the CLI shows of its libraries' own logging: nothing by default (a command reports its failures itself,
    as one ``Error:`` line or in its summary; DSPy's per-example ERROR records would repeat them with whole examples
    attached), info and up with ``-v``, debug with ``-vv``; applied now and again when DSPy is first imported."""
    _LEVEL["level"] = logging.CRITICAL if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _apply_level()
    if "dspy" not in sys.modules and not any(isinstance(f, _ApplyAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ApplyAfterImport())


def library_verbosity() -> int:
    """How much of the libraries' own output the user asked for: 0 by default, 1 with ``-v``, 2 with ``-vv``
    (commands use it for DSPy's printed chatter, which logging levels do not reach)."""
    level = _LEVEL["level"]
    return 0 if level >= logging.ERROR else 1 if level >= logging.INFO else 2


def build_cli(plugin_manager: PluginManager | None = None, *, plugin_error: str | None = None) -> click.Group:
    """The root click group with every plugin's commands added.

    ``plugin_error`` is set when plugins could not be loaded at all: the CLI then runs on a core-only manager and
    ``doctor`` reports the error as a failing check.
    """
    from dspyo3_core import __version__

    manager = plugin_manager or get_plugin_manager()

    @click.group(name="dspyo3", cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="dspyo3")
    @click.option("-v", "--verbose", count=True,
                  help="Show DSPy's and LiteLLM's own log lines and progress bars: -v errors to info, -vv debug "
                       "(default: none; failures are reported as one Error line).")
    @click.pass_context
    def cli(ctx: click.Context, verbose: int) -> None:
        """dspyo3: the production toolkit for DSPy."""
        if _LEVEL["cli"]:  # the console script's process; an app embedding the group keeps its own logging
            library_log_level(verbose)
        ctx.obj = manager
        ctx.meta["dspyo3.plugin_error"] = plugin_error

    manager.register_commands(cli)
    return cli


def _debug() -> bool:
    return os.environ.get("DSPYO3_DEBUG", "").strip().lower() not in {"", "0", "false", "no"}


def _fail(exc: BaseException) -> NoReturn:
    """Report an error no command handled as one line, ``Error: what; how to fix`` (secrets masked, see
    :mod:`dspyo3_core.failures`), and exit 1; with ``DSPYO3_DEBUG=1`` the traceback follows (masked too)."""
    from dspyo3_core.failures import describe

    click.echo(redact(f"Error: {describe(exc)}"), err=True)
    if _debug():
        import traceback

        click.echo(redact("".join(traceback.format_exception(exc))), err=True)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Every secret this process knows (LM profile keys, credential variables, keys of the LMs it builds) is masked in
    everything the CLI prints and logs, whichever library wrote it; an error no command handled is one line on
    stderr and exit status 1 (``DSPYO3_DEBUG=1`` adds the traceback).
    """
    install_redaction(streams=True)
    _LEVEL["cli"] = 1
    args = argv if argv is not None else sys.argv[1:]
    try:
        from dspyo3_core.config import load_settings

        load_settings()  # registers the profiles' keys as secrets before anything can print one
    except Exception:  # a broken config is reported by the command that needs it (or by doctor)
        pass
    try:
        try:
            cli = build_cli()
        except USER_ERRORS as exc:
            if args[:1] != ["doctor"]:
                click.echo(redact(f"Error: {exc}\nRun `dspyo3 doctor` for a full report."), err=True)
                sys.exit(1)
            cli = build_cli(core_only_manager(), plugin_error=str(exc))
        cli(args=args, prog_name="dspyo3", standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        _fail(exc)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
