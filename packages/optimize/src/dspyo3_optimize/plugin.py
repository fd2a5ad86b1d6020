"""The ``optimize`` plugin of dspyo3, registered through the ``dspyo3`` entry-point group."""

import click

from dspyo3_core import hookimpl


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the (still empty) ``dspyo3 optimize`` command group."""
    cli.add_command(click.Group(name="optimize", help="Optimizer runs for DSPy (no commands yet)."))
