"""The ``dspyo3`` command line. Core's commands and every plugin's come in through ``dspyo3_register_commands``."""

from __future__ import annotations

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
                   "cache": "production", "metrics": "production", "production": "production", "types": "types"}


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


def build_cli(plugin_manager: PluginManager | None = None, *, plugin_error: str | None = None) -> click.Group:
    """The root click group with every plugin's commands added.

    ``plugin_error`` is set when plugins could not be loaded at all: the CLI then runs on a core-only manager and
    ``doctor`` reports the error as a failing check.
    """
    from dspyo3_core import __version__

    manager = plugin_manager or get_plugin_manager()

    @click.group(name="dspyo3", cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="dspyo3")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """dspyo3: the production toolkit for DSPy."""
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
