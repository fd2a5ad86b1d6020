"""What an optimizer run reports: the :class:`RunReport` (``report.json``), the progress bar, the one-line summary
of a run whose every trial failed, and the plot of score over candidates (``scores.png``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspyo3_optimize.common import error_fix, reason_line


@dataclass
class RunReport:
    """What a run produced (also written as ``report.json`` in the run directory)."""

    run_id: str
    name: str
    status: str
    trials: list[dict[str, Any]]
    best_trial: int | None
    best_score: float | None
    out_dir: str
    report_path: str
    plot_path: str | None
    elapsed_seconds: float
    cost_usd: float | None
    resumed_trials: list[int]
    registered: dict[str, Any] | None
    dataset: dict[str, Any]
    sessions: int = 1
    lm: str | None = None
    metric: str = ""
    executor: str = "local"
    budget_via: str = "none"
    error: str | None = None
    """Set when every trial that ran failed (status ``"failed"``): one line naming how many failed, the first
    error's reason (secrets masked) and what to do."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def failure_summary(trials: Sequence[Mapping[str, Any]], profile: str | None, report_path: Path) -> str | None:
    """One line when every trial that ran (finished or failed) failed; None when any finished or none ran."""
    ran = [t for t in trials if t.get("status") in ("finished", "failed")]
    if not ran or any(t.get("status") == "finished" for t in ran):
        return None
    first = ran[0]
    reason = str(first.get("reason") or reason_line(str(first.get("error") or "unknown error")))
    what = "the trial" if len(ran) == 1 else f"all {len(ran)} trials"
    return (f"{what} failed; the first error (trial #{first.get('index')} {first.get('name')}): {reason}; "
            f"{error_fix(reason, profile)}; each trial's error is in {report_path}")


class ProgressBar:
    """A rich progress bar on stderr (trials done of all, the best dev score so far); does nothing when disabled."""

    def __init__(self, enabled: bool, total: int, name: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(name, total=total, best="-")

    def update(self, description: str, advance: int = 0, best: float | None = None) -> None:
        """Show ``description``, move ``advance`` trials on, and show ``best`` when given."""
        if self._progress is not None:
            fields: dict[str, Any] = {"description": description, "advance": advance}
            if best is not None:
                fields["best"] = f"{best:.3f}"
            self._progress.update(self._task, **fields)

    def close(self) -> None:
        """Stop drawing the bar."""
        if self._progress is not None:
            self._progress.stop()


def plot_scores(trials: Sequence[Mapping[str, Any]], path: Path, title: str) -> str | None:
    """Score over candidates: every inner candidate an optimizer reported (small dots), each trial's dev score
    (large markers) and the best dev score so far (step line)."""
    finished = [t for t in trials if t.get("status") == "finished"]
    if not finished:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = 0
    xs: list[int] = []
    ys: list[float] = []
    for trial in finished:
        inner = trial.get("candidate_scores") or []
        if inner:
            ax.scatter(range(x, x + len(inner)), inner, s=12, color="0.6")
            x += len(inner)
        ax.scatter([x], [trial["score"]], s=60, zorder=3)
        ax.annotate(str(trial["name"]), (x, trial["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        xs.append(x)
        ys.append(float(trial["score"]))
        x += 1
    best = [max(ys[: i + 1]) for i in range(len(ys))]
    ax.step(xs, best, where="post", color="black", linewidth=1, label="best dev score so far")
    ax.set_xlabel("candidate")
    ax.set_ylabel("dev score")
    ax.set_title(f"{title}: score over candidates")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
