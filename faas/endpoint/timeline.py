"""Draw an endpoint's timeline: workers active over time above cumulative
completed invocations, with each context init marked on both.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display), so it
runs headless on login nodes and in tests. matplotlib is an extra (``faas[plot]``),
imported only when a timeline is drawn.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from faas.errors import FaasError
from faas.store.report import Timeline


class MissingPlotExtra(FaasError):
    pass


def plot_timeline(timeline: Timeline, path: str | Path, title: str | None = None) -> Path:
    """Write the timeline as an image (format from the file name, e.g. .png); returns the path.

    Raises MissingPlotExtra without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise MissingPlotExtra(f"drawing a timeline needs matplotlib ({e}): pip install 'faas[plot]'") from None

    times = [t for _, start, end in timeline.workers for t in (start, end)] + timeline.finished
    times += [start for _, start, _, _ in timeline.inits]
    t0 = min(times, default=0.0)

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    workers_ax, done_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 2))

    steps = sorted([(start - t0, 1) for _, start, _ in timeline.workers]
                   + [(end - t0, -1) for _, _, end in timeline.workers])
    xs, ys, active = [0.0], [0], 0
    for x, change in steps:
        active += change
        xs.append(x)
        ys.append(active)
    workers_ax.step(xs, ys, where="post", color="C0")
    workers_ax.set_ylabel("workers active")
    workers_ax.set_ylim(bottom=0)
    workers_ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    done_ax.step([0.0, *(t - t0 for t in timeline.finished)], range(len(timeline.finished) + 1),
                 where="post", color="C2", label="completed invocations")
    done_ax.set_ylabel("completed invocations")
    done_ax.set_ylim(bottom=0)
    done_ax.set_xlabel(f"seconds since {datetime.fromtimestamp(t0):%Y-%m-%d %H:%M:%S}")

    for ok in (True, False):
        spans = [(start - t0, seconds) for _, start, seconds, good in timeline.inits if good is ok]
        label = "context init" if ok else "failed context init"
        for ax in (workers_ax, done_ax):
            for i, (x, width) in enumerate(spans):
                ax.axvspan(x, x + width, color="C1" if ok else "C3", alpha=0.2,
                           label=label if ax is done_ax and i == 0 else None)
    done_ax.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)
