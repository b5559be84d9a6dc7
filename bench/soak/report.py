"""The soak's report, in ``.run/soak/<timestamp>/``: ``counts.json`` (the counts, the
fault timeline and the settings), ``report.md`` (the same as tables) and
``throughput.png`` (final outcomes a second, with the fault windows shaded)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.chaos.ledger import Final

from .judge import Counts, Fault, throughput

STEP = 5.0  # seconds a bar of the plot


def write(
    folder: Path,
    counts: Counts,
    timeline: Sequence[Fault],
    finals: Sequence[Final],
    *,
    start: datetime,
    end: datetime,
    settings: dict[str, Any],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    faults = [
        {"name": f.name, "start": f.start.isoformat(), "end": f.end.isoformat(), "error": f.error}
        for f in timeline
    ]
    data = {"settings": settings, "counts": counts.as_dict(), "timeline": faults}
    (folder / "counts.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (folder / "report.md").write_text(markdown(counts, timeline, start=start, settings=settings))
    plot(folder / "throughput.png", timeline, finals, start=start, end=end)


def markdown(
    counts: Counts, timeline: Sequence[Fault], *, start: datetime, settings: dict[str, Any]
) -> str:
    data = counts.as_dict()
    lines = ["# Soak report", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    verdict = "every invariant held" if not counts.breaks else f"BROKEN: {counts.breaks}"
    lines += ["", f"**{verdict}**", "", "| count | value |", "|---|---|"]
    for key, value in data.items():
        if key not in ("examples", "breaks"):
            lines.append(f"| {key} | {_cell(value)} |")
    lines += ["", "## Fault timeline", "", "| fault | from s | to s | error |", "|---|---|---|---|"]
    for f in timeline:
        lines.append(
            f"| {f.name} | {(f.start - start).total_seconds():.1f} "
            f"| {(f.end - start).total_seconds():.1f} | {f.error} |"
        )
    if counts.examples:
        lines += ["", "## Examples of breaks", ""]
        lines += [f"- {key}: {value}" for key, value in counts.examples.items()]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def plot(
    path: Path,
    timeline: Sequence[Fault],
    finals: Sequence[Final],
    *,
    start: datetime,
    end: datetime,
) -> None:
    """Final outcomes a second in ``STEP``-second bars, fault windows shaded and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = throughput(finals, start, end, STEP)
    figure, axes = plt.subplots(figsize=(10, 3.6), dpi=100)
    axes.bar(
        [i * STEP for i in range(len(counts))],
        [c / STEP for c in counts],
        width=STEP,
        align="edge",
        color="#4878a8",
    )
    top = max([c / STEP for c in counts] + [1.0])
    for f in timeline:
        left = (f.start - start).total_seconds()
        width = max((f.end - f.start).total_seconds(), 0.5)
        axes.axvspan(left, left + width, color="#d62728" if f.error else "#ff7f0e", alpha=0.3)
        axes.text(left, top * 1.02, f.name, rotation=30, fontsize=7, va="bottom")
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("final outcomes / s")
    axes.set_ylim(0, top * 1.35)
    axes.set_xlim(0, (end - start).total_seconds())
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
