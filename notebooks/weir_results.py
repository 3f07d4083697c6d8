"""Load `results/<run-id>/` directories written by `weir-harness`.

The results to read come from the environment variable `WEIR_RESULTS`:
either one run directory (it holds `summary.json`) or a directory of runs,
of which the newest `<mode>-<unix time>` directory with the files a notebook
needs is taken. Without it, the repository's `results/` is searched.

Nothing here computes a figure the harness did not measure: the loaders
only parse `summary.json`, `timeseries.csv`, `latency.hgrm` and
`timeline.csv`.
"""

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def setup():
    """Small, readable figures (modest dpi keeps the notebooks light)."""
    plt.rcParams.update(
        {
            "figure.dpi": 80,
            "savefig.dpi": 80,
            "figure.figsize": (9, 3.6),
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 80)


def results_root():
    root = Path(os.environ.get("WEIR_RESULTS", REPO / "results"))
    if not root.is_absolute() and not root.exists():
        root = REPO / root  # relative to the repository rather than notebooks/
    return root


def _run_time(path):
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _has_columns(run, columns):
    if not columns:
        return True
    header = (run / "timeseries.csv").read_text().split("\n", 1)[0].split(",")
    return all(c in header for c in columns)


def runs(mode, needs=("summary.json",), columns=()):
    """Run directories of `mode` that hold every file in `needs` (and, in
    `timeseries.csv`, every column in `columns`), oldest first."""
    root = results_root()
    if (root / "summary.json").is_file():
        candidates = [root]
    else:
        candidates = sorted(root.glob(f"{mode}-*"), key=_run_time)
    found = [
        d
        for d in candidates
        if all((d / f).is_file() for f in needs)
        and json.loads((d / "summary.json").read_text()).get("mode") == mode
        and _has_columns(d, columns)
    ]
    if not found:
        raise FileNotFoundError(
            f"no {mode} run with {', '.join(needs + tuple(columns))} under {root} "
            f"(make one with `weir-harness {mode}`, or set WEIR_RESULTS)"
        )
    return found


def newest_run(mode, needs=("summary.json",), columns=()):
    return runs(mode, needs, columns)[-1]


def summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def timeseries(run):
    """`timeseries.csv` of a latency run, one row per second of load."""
    return pd.read_csv(Path(run) / "timeseries.csv")


def timeline(run):
    """`timeline.csv` of a chaos run: one row per event, `t_s` added."""
    t = pd.read_csv(Path(run) / "timeline.csv")
    t["t_s"] = t["t_ms"] / 1000.0
    return t


def hgrm(run):
    """The percentile distribution of `latency.hgrm`: value_ms, percentile, count."""
    rows = []
    for line in (Path(run) / "latency.hgrm").read_text().splitlines():
        parts = line.split()
        if len(parts) != 4 or line.startswith("#"):
            continue
        try:
            value, percentile, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            continue  # the header
        rows.append((value, percentile, count))
    return pd.DataFrame(rows, columns=["value_ms", "percentile", "count"])


def describe(run):
    """One line naming the run: its directory and command."""
    s = summary(run)
    return f"{Path(run).name}: {s.get('command', '')} (commit {s.get('git_commit', '')[:10]})"


def export(fig, name):
    """Saves `fig` as PNG into `$WEIR_EXPORT_IMG` if that is set (README image)."""
    target = os.environ.get("WEIR_EXPORT_IMG")
    if target:
        target = REPO / target  # a relative path: relative to the repository
        target.mkdir(parents=True, exist_ok=True)
        fig.savefig(target / name, bbox_inches="tight")
