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


class _Root(click.Group):
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
    """Report an error nothing else handled as one line (secrets masked) and exit 1; with ``DSPYO3_DEBUG=1`` the
    traceback follows (masked too)."""
    text = str(exc).strip() or "(no message)"
    name = type(exc).__name__
    message = text if isinstance(exc, USER_ERRORS) else f"{name}: {text}"
    click.echo(redact(f"Error: {message}"), err=True)
    if _debug():
        import traceback

        click.echo(redact("".join(traceback.format_exception(exc))), err=True)
    else:
        click.echo("(set DSPYO3_DEBUG=1 to see the traceback)", err=True)
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
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        _fail(exc)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
