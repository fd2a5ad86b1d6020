"""The ``dspyo3`` command line. Core's commands and every plugin's come in through ``dspyo3_register_commands``."""

from __future__ import annotations

import sys

import click

from dspyo3_core.plugins import PluginManager, get_plugin_manager


def build_cli(plugin_manager: PluginManager | None = None) -> click.Group:
    """The root click group with every plugin's commands added."""
    from dspyo3_core import __version__

    manager = plugin_manager or get_plugin_manager()

    @click.group(name="dspyo3", context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="dspyo3")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """dspyo3: the production toolkit for DSPy."""
        ctx.obj = manager

    manager.register_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    build_cli()(args=argv if argv is not None else sys.argv[1:], prog_name="dspyo3")
