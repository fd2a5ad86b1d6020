"""The ``types`` plugin of dspyo3: the ``dspyo3 types`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dspyo3_core import hookimpl


@click.group(name="types", help="Typed signatures: the signature IR and code generated from it.")
def types_group() -> None:
    """``dspyo3 types``."""


@types_group.command("codegen")
@click.argument("target")
@click.option("--lang", type=click.Choice(["rust", "pydantic", "jsonschema"]), required=True,
              help="what to generate")
@click.option("--program", metavar="PKG.MODULE:CLASS", help="the class to load a saved program .json into")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="write here (atomically) instead of stdout")
@click.option("--dspyo3", "derive_dspyo3", is_flag=True,
              help="rust: a #[derive(dspyo3::Signature)] struct per signature, DspyType on nested types")
def codegen(target: str, lang: str, program: str | None, output: Path | None, derive_dspyo3: bool) -> None:
    """Generate code for TARGET's signatures.

    TARGET is package.module:Signature, a module (every predictor), or a saved program .json (with --program).
    """
    from dspyo3_core.files import atomic_write_text
    from dspyo3_core.inspector import InspectError
    from dspyo3_core.ir import UnsupportedTypeError
    from dspyo3_types.codegen import generate, signatures_of

    try:
        signatures = signatures_of(target, program)
        code = generate(signatures, lang, source=target, derive_dspyo3=derive_dspyo3)
    except (InspectError, UnsupportedTypeError) as exc:
        raise click.ClickException(str(exc)) from None
    if output is None:
        click.echo(code, nl=False)
    else:
        atomic_write_text(output, code)
        click.echo(f"wrote {output} ({lang}, {len(signatures)} signature{'s' if len(signatures) != 1 else ''})",
                   err=True)


@types_group.command("ir")
@click.argument("target")
@click.option("--program", metavar="PKG.MODULE:CLASS", help="the class to load a saved program .json into")
def ir(target: str, program: str | None) -> None:
    """Print the signature IR (JSON) of TARGET's signatures."""
    from dspyo3_core.inspector import InspectError
    from dspyo3_core.ir import UnsupportedTypeError
    from dspyo3_types.codegen import signatures_of

    try:
        click.echo(json.dumps(signatures_of(target, program), indent=2))
    except (InspectError, UnsupportedTypeError) as exc:
        raise click.ClickException(str(exc)) from None


@hookimpl
def dspyo3_register_commands(cli: click.Group) -> None:
    """Add the ``dspyo3 types`` command group."""
    cli.add_command(types_group)
