"""Reports of benchmark results: summaries over runs, Markdown tables and figures.

:func:`summarize` aggregates several runs (seeds) of
:func:`~harmonix.benchmark.run_benchmark` into mean ± sd and a confidence interval of the
mean, :func:`to_markdown` renders tables with intervals and marks the methods that differ
from a baseline, :func:`plot_metrics` and :func:`plot_slices` draw figures (matplotlib,
no display needed).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harmonix.benchmark.bootstrap import combine_intervals
from harmonix.benchmark.data import dataset_arrays
from harmonix.benchmark.metrics import METRICS, resolve_metric_names
from harmonix.benchmark.metrics.scale import robust_scale
from harmonix.exceptions import BenchmarkWarning

__all__ = ["plot_metrics", "plot_slices", "summarize", "to_markdown"]

PROTOCOLS = ("seen", "unseen")
SUMMARY_COLUMNS = [
    "method",
    "protocol",
    "metric",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "n",
    "n_datasets",
    "reason",
    "held_out",
]


def summarize(dfs: pd.DataFrame | Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Aggregate several benchmark runs (e.g. seeds) into mean ± sd and an interval.

    Parameters
    ----------
    dfs : DataFrame or sequence of DataFrames
        Results of :func:`run_benchmark`: one frame per run, or one frame holding several
        runs (rows with the same method, protocol and metric are aggregated).

    Returns
    -------
    pandas.DataFrame
        Columns ``method, protocol, metric, mean, sd, ci_low, ci_high, n, n_datasets,
        reason, held_out``: mean and sample standard deviation (ddof=1; NaN for a single
        value) over the runs with a finite value, ``n`` the number of such runs and
        ``n_datasets`` the number of data sets among them, ``reason`` the distinct
        reasons of the missing ones, ``held_out`` the distinct held-out site sets
        (``"; "``-separated). ``ci_low, ci_high`` bound the 95 % interval of the mean:
        the runs' bootstrap intervals (resampled subjects) combined by
        :func:`~harmonix.benchmark.bootstrap.combine_intervals`, as independent errors
        for runs on different data sets and as shared ones for runs on the same data set
        (the ``dataset`` fingerprint of :func:`run_benchmark`): several seeds of a method
        on one data set do not narrow the interval. NaN when the runs have none.

    Warns
    -----
    BenchmarkWarning
        When several runs have no ``dataset`` column (older results, or frames built by
        hand): they are then taken to share one data set, the cautious choice; add a
        ``dataset`` column naming each run's data set to combine independent data sets.
    """
    frames = [dfs] if isinstance(dfs, pd.DataFrame) else list(dfs)
    if not frames:
        raise ValueError("summarize needs at least one result DataFrame.")
    df = pd.concat(frames, ignore_index=True)
    missing = {"method", "protocol", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"Not a run_benchmark result: columns {sorted(missing)} are missing.")
    if "reason" not in df.columns:
        df["reason"] = ""
    if "dataset" not in df.columns:
        if df.duplicated(["method", "protocol", "metric"]).any():
            warnings.warn(
                "The results have no 'dataset' column, so summarize cannot tell runs on "
                "other subjects from repeated runs on the same subjects; it assumes one "
                "data set (intervals are not narrowed by the number of runs). Add a "
                "'dataset' column naming each run's data set to combine independent data "
                "sets.",
                BenchmarkWarning,
                stacklevel=2,
            )
        df["dataset"] = "one data set"
    out = []
    for (method, protocol, metric), g in df.groupby(["method", "protocol", "metric"], sort=False):
        vals = g["value"].to_numpy(dtype=float)
        ok = np.isfinite(vals)
        reasons = [r for r in dict.fromkeys(g["reason"].fillna("").astype(str)) if r]
        lo = g["ci_low"].to_numpy(dtype=float) if "ci_low" in g else np.full(len(g), np.nan)
        hi = g["ci_high"].to_numpy(dtype=float) if "ci_high" in g else np.full(len(g), np.nan)
        datasets = g["dataset"].astype(str).to_numpy()
        ci = combine_intervals(vals, lo, hi, datasets=datasets)
        held = g["held_out"].fillna("").astype(str).tolist() if "held_out" in g else []
        out.append(
            {
                "method": method,
                "protocol": protocol,
                "metric": metric,
                "mean": float(vals[ok].mean()) if ok.any() else np.nan,
                "sd": float(vals[ok].std(ddof=1)) if ok.sum() > 1 else np.nan,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "n": int(ok.sum()),
                "n_datasets": len(set(datasets[ok].tolist())),
                "reason": "; ".join(reasons),
                "held_out": "; ".join(dict.fromkeys(held)),
            }
        )
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _direction(metric: str) -> str:
    return METRICS.get(metric, ("", ""))[0]


def _arrow(metric: str) -> str:
    return {"higher": "↑", "lower": "↓", "target": "→ true"}.get(_direction(metric), "")


def _decimals(value: float) -> int:
    a = abs(value)
    if a >= 100 or a == 0:
        return 0
    if a >= 10:
        return 1
    if a >= 1:
        return 2
    return max(3, int(-np.floor(np.log10(a))) + 1)


def _fmt(mean: float, sd: float | None) -> str:
    d = _decimals(mean)
    text = f"{mean:.{d}f}"
    if sd is not None and np.isfinite(sd):
        text += f" ± {sd:.{d}f}"
    return text


def _ordered(values: Iterable[Any], order: Sequence[Any]) -> list[Any]:
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def _cell_values(row: pd.Series, summary: bool) -> tuple[float, float | None, float, float]:
    value = float(row["mean"] if summary else row["value"])
    sd = float(row["sd"]) if summary else None
    lo = float(row["ci_low"]) if "ci_low" in row.index else np.nan
    hi = float(row["ci_high"]) if "ci_high" in row.index else np.nan
    return value, sd, lo, hi


def _separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when two finite intervals do not overlap."""
    if not all(np.isfinite(v) for v in (*a, *b)):
        return False
    return a[1] < b[0] or b[1] < a[0]


def _error_bar(hit: pd.DataFrame, value: float, summary: bool) -> tuple[float, float]:
    """(below, above) error-bar lengths: the interval when present, else ± sd."""
    if not len(hit) or not np.isfinite(value):
        return (np.nan, np.nan)
    row = hit.iloc[0]
    if "ci_low" in row.index and np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
        return (max(value - float(row["ci_low"]), 0.0), max(float(row["ci_high"]) - value, 0.0))
    sd = float(row["sd"]) if summary else np.nan
    return (sd, sd)


def _columns(df: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        return resolve_metric_names(list(metrics))
    return [m for m in _ordered(df["metric"], list(METRICS)) if _direction(m) != "reference"]


def to_markdown(
    df: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    legend: bool = True,
    baseline: str | None = "none",
) -> str:
    """Render benchmark results as Markdown tables, one per protocol.

    Rows are methods, columns metrics with an arrow saying whether higher (↑) or lower
    (↓) is better, or whether the value should equal the true one (→ true). A cell reads
    ``value [low, high]`` with the 95 % bootstrap interval when there is one (``mean ± sd
    [low, high]`` for a :func:`summarize` result); ``*`` marks a method whose interval
    does not overlap the ``baseline`` method's. Reference values (chance level, null
    brain-age error, true GM-age correlation: the same for every method) are listed under
    each table instead of as columns. Values missing for a reason show ``n/a`` with a
    numbered note.

    Parameters
    ----------
    df : DataFrame
        Output of :func:`run_benchmark` (one run) or :func:`summarize` (several runs).
    metrics : sequence of str, default=None
        Columns to show, in order (default: every metric present but the references).
    legend : bool, default=True
        Append a list of the metrics with their descriptions.
    baseline : str or None, default="none"
        Method the ``*`` marks compare with (None: no marks).

    Returns
    -------
    str
        Markdown text.
    """
    summary = "mean" in df.columns
    cols = _columns(df, metrics)
    lines: list[str] = []
    notes: dict[str, int] = {}
    marked = False
    held = ""
    if "held_out" in df.columns:
        held = "; ".join(v for v in dict.fromkeys(df["held_out"].fillna("").astype(str)) if v)
    for protocol in _ordered(df["protocol"], PROTOCOLS):
        sub = df[df["protocol"] == protocol]
        title = {
            "seen": "Seen sites (harmonizers fitted on them)",
            "unseen": f"Unseen sites (held out of fit{': ' + held if held else ''})",
        }.get(protocol, str(protocol))
        lines += [f"### {title}", ""]
        lines.append("| method | " + " | ".join(f"{m} {_arrow(m)}" for m in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        rows = {(r["method"], r["metric"]): r for _, r in sub.iterrows()}
        for method in _ordered(sub["method"], []):
            cells = []
            for metric in cols:
                row = rows.get((method, metric))
                if row is None:
                    cells.append("")
                    continue
                value, sd, lo, hi = _cell_values(row, summary)
                reason = str(row.get("reason", "") or "")
                if not np.isfinite(value):
                    if reason:
                        notes.setdefault(reason, len(notes) + 1)
                        cells.append(f"n/a [{notes[reason]}]")
                    else:
                        cells.append("n/a")
                    continue
                d = _decimals(value)
                text = f"{value:.{d}f}"
                if sd is not None and np.isfinite(sd):
                    text += f" ± {sd:.{d}f}"
                if np.isfinite(lo) and np.isfinite(hi):
                    text += f" [{lo:.{d}f}, {hi:.{d}f}]"
                base = rows.get((baseline, metric))
                if base is not None and method != baseline:
                    _, _, blo, bhi = _cell_values(base, summary)
                    if _separated((lo, hi), (blo, bhi)):
                        text += " *"
                        marked = True
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        refs = []
        for metric in (m for m in METRICS if _direction(m) == "reference"):
            hit = sub[(sub["metric"] == metric)]
            vals = hit["mean" if summary else "value"].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                refs.append(f"`{metric}` {vals[0]:.{_decimals(vals[0])}f}")
        lines.append("")
        if refs:
            lines += ["Reference values (the same for every method): " + ", ".join(refs), ""]
    if notes:
        lines += ["Notes:", ""]
        lines += [f"[{i}] {reason}  " for reason, i in notes.items()]
        lines.append("")
    if legend:
        lines += [
            "Metrics (↑ higher is better, ↓ lower is better, → true: closest to the "
            "true value is best):",
            "",
        ]
        for m in [*cols, *(m for m in METRICS if _direction(m) == "reference")]:
            if m in METRICS:
                lines.append(f"- `{m}` {_arrow(m)}: {METRICS[m][1]}")
        if summary:
            n = int(df["n"].max()) if len(df) else 0
            lines.append(
                f"- cells: mean ± sd over up to {n} runs [95 % interval of the mean, "
                "subjects resampled within each run; runs on the same data set share "
                "their subjects and do not narrow it]"
            )
        else:
            lines.append("- cells: value [95 % bootstrap interval, subjects resampled]")
        if marked:
            lines.append(f"- `*`: the interval does not overlap that of `{baseline}`")
        lines.append("")
    return "\n".join(lines)


def plot_metrics(
    df: pd.DataFrame,
    path: str | PathLike,
    *,
    metrics: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:
    """Bar charts: one panel per metric, one bar per method and protocol.

    Parameters
    ----------
    df : DataFrame
        Output of :func:`run_benchmark` or :func:`summarize`; error bars show the 95 %
        intervals when present, else ± sd.
    path : str or path-like
        PNG file to write (its folder is created).
    metrics : sequence of str, default=None
        Panels to draw (default: every metric present but the reference values).
    dpi : int, default=100
        Resolution.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.figure import Figure  # Agg canvas: no display, no pyplot state

    summary = "mean" in df.columns
    value_col = "mean" if summary else "value"
    cols = _columns(df, metrics)
    if not cols:
        raise ValueError("Nothing to plot: the DataFrame has no metric rows.")
    methods = _ordered(df["method"], [])
    protocols = _ordered(df["protocol"], PROTOCOLS)
    ncols = min(4, len(cols))
    nrows = int(np.ceil(len(cols) / ncols))
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.4))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.12, wspace=0.3, hspace=0.75)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    width = 0.8 / len(protocols)
    x = np.arange(len(methods))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for k, metric in enumerate(cols):
        ax = axes.flat[k]
        for p, protocol in enumerate(protocols):
            sub = df[(df["metric"] == metric) & (df["protocol"] == protocol)]
            vals, errs = [], []
            for method in methods:
                hit = sub[sub["method"] == method]
                v = float(hit[value_col].iloc[0]) if len(hit) else np.nan
                vals.append(v)
                errs.append(_error_bar(hit, v, summary))
            vals_a = np.asarray(vals)
            errs_a = np.nan_to_num(np.asarray(errs).T)
            pos = x - 0.4 + width * (p + 0.5)
            ax.bar(
                pos,
                np.nan_to_num(vals_a),
                width,
                yerr=errs_a,
                color=colors[p % len(colors)],
                label=protocol,
                capsize=2,
            )
            for xi, v in zip(pos, vals_a):
                if not np.isfinite(v):
                    ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_title(f"{metric} {_arrow(metric)}", fontsize=9)
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in list(axes.flat)[len(cols) :]:
        ax.set_visible(False)
    if len(protocols) > 1:
        axes.flat[0].legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_slices(
    outputs: Mapping[str, Any],
    dataset: Any,
    subject: Any,
    path: str | PathLike,
    *,
    sites: Sequence[Any] | None = None,
    axis: int = 2,
    index: int | None = None,
    test_sites: Sequence[Any] | None = None,
    dpi: int = 100,
) -> Path:
    """One slice of one subject at several sites: input, each method and the truth.

    Each row (the raw input, each method's output, then ``dataset.truth`` when present) is
    displayed on the common scale of :func:`~harmonix.benchmark.metrics.robust_scale`
    fitted on that row's images, so a site's remaining intensity difference shows.

    Parameters
    ----------
    outputs : mapping of str to ndarray of shape (n_images, i, j, k)
        Harmonized images of every dataset image, in dataset order (as returned by
        ``run_benchmark(..., return_outputs=True)``); NaN images are shown as n/a.
    dataset : MultisiteDataset or object
        With ``imgs``, ``sites``, ``subjects``, ``mask`` (and optionally ``truth``).
    subject : label
        Subject to show.
    path : str or path-like
        PNG file to write.
    sites : sequence of labels, default=None
        Columns (default: every site where the subject was scanned).
    axis : int, default=2
        Axis orthogonal to the slice (2 = axial on the MNI grids).
    index : int, default=None
        Slice index (default: middle of the brain mask along ``axis``).
    test_sites : sequence of labels, default=None
        Sites to mark "(unseen)" in the column titles.
    dpi : int, default=100

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.figure import Figure

    data = dataset_arrays(dataset)
    rows_idx = np.flatnonzero(data.subjects == subject)
    if not len(rows_idx):
        raise ValueError(f"Subject {subject!r} is not in the dataset.")
    by_site = {data.sites[i]: i for i in rows_idx}
    columns = list(sites) if sites is not None else _ordered(data.sites[rows_idx], [])
    absent = [s for s in columns if s not in by_site]
    if absent:
        raise ValueError(f"Subject {subject!r} has no image at site(s) {absent}.")
    idx = [by_site[s] for s in columns]
    mask = data.mask
    if index is None:
        where = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        index = int((where.min() + where.max()) // 2)
    panels: list[tuple[str, Any]] = [("input", data.imgs)]
    panels += [(str(k), v) for k, v in outputs.items()]
    if data.truth is not None:
        panels.append(("truth", data.truth))
    unseen = set(test_sites or [])
    fig = Figure(figsize=(2.0 * len(columns) + 0.6, 2.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(columns), squeeze=False)
    for r, (label, images) in enumerate(panels):
        arr = np.asarray(images)[idx].astype(np.float32)
        ok = np.isfinite(arr).all(axis=(1, 2, 3))
        shown = np.zeros_like(arr)
        if ok.any():
            shown[ok] = robust_scale(arr[ok], mask)
        for c, site in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if ok[c]:
                ax.imshow(
                    np.rot90(np.take(shown[c], index, axis=axis)),
                    cmap="gray",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
            else:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            if r == 0:
                ax.set_title(f"{site}{' (unseen)' if site in unseen else ''}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"subject {subject}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
