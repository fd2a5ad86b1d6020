"""Program sources: where a served or evaluated DSPy program comes from, and which version of it is current.

Part of core's lowest layer (no DSPy, no other dspyo3 module). A plugin resolves a reference (``registry:qa@prod``,
``qa@1.2.0``) to a :class:`ProgramSource` through the ``dspyo3_resolve_program`` hook; ``dspyo3 serve`` polls
:meth:`ProgramSource.current` to follow a registry stage and calls :meth:`ProgramSource.load` to build the version
it switches to. dspyo3-optimize resolves references into its program registry.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ProgramSource", "ProgramSourceError"]


class ProgramSourceError(Exception):
    """A program reference cannot be resolved or a version cannot be loaded; the message says why and what to do."""


@runtime_checkable
class ProgramSource(Protocol):
    """One named program whose current version may change while it is served.

    Attributes:
        name: the program's name (the registry name; ``dspyo3 serve`` serves it at ``/v1/programs/<name>``).
        reference: the reference it was resolved from, as the user wrote it.
        stage: the registry stage it follows (``"prod"``), or None when it is pinned to one version.
    """

    name: str
    reference: str
    stage: str | None

    def current(self) -> str:
        """The version the reference points at now (cheap: called every few seconds to notice a promotion)."""
        ...

    def load(self, version: str) -> Any:
        """A ready ``dspy.Module`` for ``version`` (checksums verified; never runs code the user did not trust).

        Raises:
            ProgramSourceError: the version cannot be loaded; the message names it and the fix.
        """
        ...
