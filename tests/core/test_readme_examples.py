"""Every ```python block in the packages' READMEs runs as written (a package whose own
``tests/<package>/test_readme.py`` runs its README and checks what it prints is left to that test, so no example
runs twice)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dspyo3_core.testing.readme import python_blocks

REPO = Path(__file__).resolve().parents[2]
READMES = sorted((REPO / "packages").glob("*/README.md"))


def has_own_test(readme: Path) -> bool:
    """Whether the package's tests run this README themselves (and check its output)."""
    own = REPO / "tests" / readme.parent.name / "test_readme.py"
    return own.is_file() and readme.parent.name in own.read_text() and "run_python_blocks" in own.read_text()


def blocks(*, all_readmes: bool = False) -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        if not all_readmes and has_own_test(readme):
            continue
        for index, code in enumerate(python_blocks(readme)):
            found.append((f"{readme.parent.name}-{index}", code))
    return found


def test_every_package_readme_has_an_example() -> None:
    names = {name.rsplit("-", 1)[0] for name, _ in blocks(all_readmes=True)}
    assert names == {p.parent.name for p in READMES}


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[name for name, _ in blocks()])
def test_readme_example_runs(name: str, code: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-2000:]}"
