"""The ``dspyo3`` command line. Core's commands and every plugin's come in through ``dspyo3_register_commands``."""

from __future__ import annotations

import sys
from typing import Any

import click

from dspyo3_core.config import ConfigError
from dspyo3_core.plugins import PluginError, PluginManager, core_only_manager, get_plugin_manager
from dspyo3_core.registry import DuplicateNameError

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = argv if argv is not None else sys.argv[1:]
    try:
        cli = build_cli()
    except USER_ERRORS as exc:
        if args[:1] != ["doctor"]:
            click.echo(f"Error: {exc}\nRun `dspyo3 doctor` for a full report.", err=True)
            sys.exit(1)
        cli = build_cli(core_only_manager(), plugin_error=str(exc))
    cli(args=args, prog_name="dspyo3")
