"""Hatchling build hook shared by the dspyo3 packages (each package's ``hatch_build.py`` links here).

A dspyo3 package depends on its siblings (``dspyo3-core``, ``dspyo3-native``), which live in this repository.
The hook adds those dependencies at build time, listed in ``[tool.dspyo3] siblings``:

* editable builds (the hatch workspace env installs every member with ``-e``) get plain version ranges, which
  the editable siblings installed alongside satisfy;
* standard builds inside a checkout of the repository (``pip install ./packages/rag``) get
  ``name @ file:///.../packages/core`` references, so pip builds and installs the siblings from the same
  checkout: only the packages asked for and what they need;
* builds outside a checkout (an sdist on its own), or with ``DSPYO3_RELEASE_BUILD=1``, get version ranges.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_REQUIREMENT = re.compile(r"^\s*(dspyo3-[a-z]+)\s*(.*)$")


def _sibling_dir(repo: Path, name: str) -> Path:
    if name == "dspyo3-native":
        return repo / "crates" / "dspyo3-native"
    return repo / "packages" / name.removeprefix("dspyo3-")


class SiblingDependencies(BuildHookInterface):  # type: ignore[type-arg]
    """Adds ``[tool.dspyo3] siblings`` to the wheel's dependencies (see module docstring)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        table = self.metadata.config.get("tool", {}).get("dspyo3", {})
        siblings: list[str] = list(table.get("siblings", []))
        repo = Path(self.root).resolve().parent.parent
        local = version != "editable" and os.environ.get("DSPYO3_RELEASE_BUILD", "") != "1"
        for requirement in siblings:
            match = _REQUIREMENT.match(requirement)
            if match is None:
                raise ValueError(f"[tool.dspyo3] siblings: {requirement!r} is not 'dspyo3-<name> <version range>'")
            name = match.group(1)
            path = _sibling_dir(repo, name)
            if local and (path / "pyproject.toml").is_file():
                build_data["dependencies"].append(f"{name} @ {path.as_uri()}")
            else:
                build_data["dependencies"].append(requirement)
