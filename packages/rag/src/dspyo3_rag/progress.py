"""Progress bars of the long ``dspyo3 rag`` verbs: rich bars on stderr, shown only when asked for and stderr is a
terminal (so pipes, logs and ``--json`` output stay clean)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Bar", "bar", "wanted"]


def wanted(requested: bool = True) -> bool:
    """Whether to draw progress: ``requested`` (``--progress/--no-progress``) and stderr is a terminal."""
    try:
        return requested and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Bar:
    """One task of a progress display; :meth:`advance` by the work done. Does nothing when disabled."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more units as done."""
        if self._progress is not None:
            self._progress.advance(self._task, amount)


@contextmanager
def bar(description: str, total: int, enabled: bool) -> Iterator[Bar]:
    """A progress bar on stderr for ``total`` units, or a :class:`Bar` that does nothing when not ``enabled``."""
    if not enabled:
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=False)
    with progress:
        yield Bar(progress, progress.add_task(description, total=total))
