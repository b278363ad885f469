"""Shared plotting helpers: results (dicts and arrays) in, PNG files out, one consistent style.

Every function draws on a standalone `matplotlib.figure.Figure` rendered by the Agg canvas, so no
display, no pyplot global state, and it is safe to call from library code and tests. Files are
written atomically (temporary file, then rename), and each function returns the path it wrote.

Summary statistics over seeds:
- ``stat="mean"``: the mean with a 95% confidence interval of the mean (Student t, n - 1 dof);
- ``stat="median"``: the median with the 25-75% interquartile band (the paper's figures).
"""

import uuid
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from internal_rl.common.errors import ConfigError

Stat = Literal["mean", "median"]
# One run of a curve: (x, y) points, e.g. (episodes, success rate).
Run = Sequence[tuple[float, float]]

# Colour-blind-friendly cycle (Okabe-Ito) shared by every figure, so a method keeps its colour.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
_STYLE = {"figsize": (6.0, 4.0), "dpi": 120, "band_alpha": 0.2, "grid_alpha": 0.3, "linewidth": 1.8}

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom; beyond that the normal 1.96 is used.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def colour(index: int) -> str:
    """The `index`-th colour of the shared palette (cycled)."""
    return PALETTE[index % len(PALETTE)]


def summarize(samples: np.ndarray, stat: Stat = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, lower and upper band over axis 0 of `samples` [n_runs, n_points], ignoring NaNs.

    With one valid run at a point the band collapses onto the centre.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim == 1:
        samples = samples[:, None]
    if stat not in ("mean", "median"):
        raise ConfigError(f"unknown stat {stat!r}; valid: 'mean', 'median'")
    n = np.sum(~np.isnan(samples), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if stat == "median":
            centre = np.nanmedian(samples, axis=0)
            lower = np.nanpercentile(samples, 25, axis=0)
            upper = np.nanpercentile(samples, 75, axis=0)
        else:
            centre = np.nanmean(samples, axis=0)
            squares = np.nansum((samples - centre) ** 2, axis=0)
            sem = np.sqrt(squares / np.maximum(n - 1, 1)) / np.sqrt(np.maximum(n, 1))
            t = np.array([_t975(k - 1) for k in n])
            half = np.where(n > 1, t * sem, 0.0)
            lower, upper = centre - half, centre + half
    return centre, lower, upper


def _t975(dof: int) -> float:
    if dof < 1:
        return 0.0
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def _is_single_run(value: Sequence) -> bool:
    """True if `value` is one run [(x, y), ...] rather than a list of runs [[(x, y), ...], ...]."""
    if len(value) == 0:
        return True
    first = value[0]
    return len(first) == 2 and all(np.isscalar(v) for v in first)


def align_runs(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """Put runs with possibly different x values on the union grid of x.

    Returns (x [P], y [n_runs, P]); each run is linearly interpolated inside its own x range and NaN
    outside it, so a run that stopped early does not drag the statistics at later x.
    """
    grid = np.unique(np.concatenate([np.asarray([p[0] for p in run], dtype=float) for run in runs if len(run)]))
    ys = np.full((len(runs), len(grid)), np.nan)
    for i, run in enumerate(runs):
        if len(run) == 0:
            continue
        pts = np.asarray(sorted(run), dtype=float)
        inside = (grid >= pts[0, 0]) & (grid <= pts[-1, 0])
        ys[i, inside] = np.interp(grid[inside], pts[:, 0], pts[:, 1])
    return grid, ys


def plot_curves(
    curves: Mapping[str, Sequence[Run] | Run],
    xlabel: str,
    ylabel: str,
    path: Path,
    *,
    title: str | None = None,
    stat: Stat = "mean",
    logx: bool = False,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Line plot of one or more labelled curves, each summarised over runs (seeds) with a band.

    `curves` maps a label (e.g. a method) to a list of runs, each run a list of (x, y) points; a single
    run may also be given directly as a list of (x, y). Runs need not share x values (see
    `align_runs`). `references` draws labelled horizontal dashed lines (e.g. chance, expert success).
    """
    if not curves:
        raise ConfigError("plot_curves: no curves to plot")
    fig, ax = _new_axes()
    for i, (label, runs) in enumerate(curves.items()):
        runs = [runs] if _is_single_run(runs) else list(runs)
        if not any(len(r) for r in runs):
            continue
        x, ys = align_runs(runs)
        centre, lower, upper = summarize(ys, stat)
        n_runs = len(runs)
        shown = f"{label} (n={n_runs})" if n_runs > 1 else label
        ax.plot(x, centre, color=colour(i), lw=_STYLE["linewidth"], label=shown)
        if n_runs > 1:
            ax.fill_between(x, lower, upper, color=colour(i), alpha=_STYLE["band_alpha"], lw=0)
    _draw_references(ax, references)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    band = "mean, 95% CI" if stat == "mean" else "median, 25-75%"
    _finish(ax, xlabel, ylabel, title, ylim, note=band)
    return _save(fig, path)


def plot_layers(
    series: Mapping[str, Mapping[int, float | Sequence[float]]],
    path: Path,
    *,
    ylabel: str,
    xlabel: str = "layer (residual stream index)",
    title: str | None = None,
    references: Mapping[str, float] | None = None,
    baselines: Mapping[str, float] | None = None,
    dashed: Sequence[str] = (),
    highlight: int | None = None,
    highlight_label: str = "controlled layer L/2",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    stat: Stat = "mean",
) -> Path:
    """Value against layer index for several series (e.g. probe accuracy, steering success).

    `series` maps a label to {layer: value}; layers may differ between series (probes cover 0..L,
    controllers 1..L-1). A value may be a list over seeds, drawn as the centre with an error bar.
    `baselines` maps a series label to a layer-independent value (e.g. success without control), drawn
    as a dotted line in that series' colour; `references` are grey dashed lines (chance, majority class).
    Series named in `dashed` are drawn dashed (e.g. what is read, next to what is written).
    `highlight` shades one layer (e.g. the controlled layer L/2).
    """
    if not series:
        raise ConfigError("plot_layers: no series to plot")
    fig, ax = _new_axes()
    all_layers: set[int] = set()
    for i, (label, values) in enumerate(series.items()):
        layers = sorted(int(k) for k in values)
        all_layers.update(layers)
        samples = [np.atleast_1d(np.asarray(values[k] if k in values else values[str(k)], dtype=float)) for k in layers]
        stats = [summarize(s[:, None], stat) for s in samples]
        centre = np.array([s[0][0] for s in stats])
        lower = np.array([s[1][0] for s in stats])
        upper = np.array([s[2][0] for s in stats])
        style = "--" if label in dashed else "-"
        ax.plot(layers, centre, marker="o", ls=style, color=colour(i), lw=_STYLE["linewidth"], label=label)
        if any(len(s) > 1 for s in samples):
            ax.errorbar(layers, centre, yerr=[centre - lower, upper - centre], fmt="none", ecolor=colour(i), capsize=3)
        if baselines and label in baselines:
            value = baselines[label]
            ax.axhline(value, color=colour(i), ls=":", lw=1.2, label=f"{label}: no control ({value:.2f})")
    if highlight is not None:
        ax.axvspan(highlight - 0.4, highlight + 0.4, color="0.93", zorder=0, lw=0, label=highlight_label)
    _draw_references(ax, references)
    if all_layers:
        ax.set_xticks(sorted(all_layers))
    _finish(ax, xlabel, ylabel, title, ylim)
    return _save(fig, path)


def _new_axes():
    fig = Figure(figsize=_STYLE["figsize"], dpi=_STYLE["dpi"])
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _tidy(ax) -> None:
    ax.grid(True, alpha=_STYLE["grid_alpha"])
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _draw_references(ax, references: Mapping[str, float] | None) -> None:
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="0.35", ls=(0, (4, 2 + 2 * j)), lw=1, label=name)


def _finish(ax, xlabel: str, ylabel: str, title: str | None, ylim, note: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if note:
        ax.text(1.0, 1.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
    _tidy(ax)
    n_entries = len(ax.get_legend_handles_labels()[0])
    if n_entries > 4:  # a long legend goes beside the axes, so it never hides data
        width, height = ax.figure.get_size_inches()
        ax.figure.set_size_inches(width + 2.8, height)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif n_entries:
        ax.legend(frameon=False, fontsize=8)
    ax.figure.tight_layout()


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG atomically, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.png")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
