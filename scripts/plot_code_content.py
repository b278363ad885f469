"""Figure: the metacontroller's codes name places, and places explain the actions better than subgoals.

    .venv/bin/python scripts/plot_code_content.py --codes NAME=RUN/switching[_STAGE].json ... \
        --fits NAME=STEERING_DIAGNOSTICS.json ... --out docs/figures/code_content.png

Left: for each metacontroller (the `code_content` of `internal-rl analyse`'s switching JSON), how often a linear read-out of a segment's
code gives its subgoal by name, and through the layout (the subgoal whose first colour lies nearest the place
the code predicts), each beside its baseline. Right: held-out action NLL of supervised controllers indexed
by different labels (`scripts/steering_diagnostics.py --labels ...` outputs), with the base model alone,
and, for those rolled out, their expert-normalised success.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _named(items: list[str]) -> list[tuple[str, dict]]:
    pairs = []
    for item in items:
        name, _, path = item.rpartition("=")
        if not name or not Path(path).is_file():
            sys.exit(f"error: {item!r}: expected NAME=FILE with an existing FILE")
        pairs.append((name, json.loads(Path(path).read_text())))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", nargs="+", required=True, help="NAME=switching.json (from internal-rl analyse, grid world)")
    parser.add_argument("--fits", nargs="+", required=True, help="NAME=steering_diagnostics.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    codes = [(name, switching["code_content"]) for name, switching in _named(args.codes)]
    fits = _named(args.fits)
    fig = Figure(figsize=(15, 3.8))
    FigureCanvasAgg(fig)
    left, right, steer = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1, 1.2]})
    x = np.arange(len(codes))
    for offset, key, label in ((-0.2, "subgoal", "subgoal by name"), (0.2, "subgoal_through_place", "subgoal through the layout")):
        values = [c[key]["accuracy"] for _, c in codes]
        baselines = [c[key]["baseline"] for _, c in codes]
        bars = left.bar(x + offset, values, 0.38, label=label)
        left.hlines(baselines, x + offset - 0.19, x + offset + 0.19, colors="k", linestyles="dashed")
        left.bar_label(bars, fmt="%.2f", fontsize=8)
    left.set_xticks(x, [name for name, _ in codes], fontsize=8)
    left.set_ylabel("probe accuracy (dashed: baseline)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8, loc="upper right")
    left.set_title("what a segment code identifies", fontsize=10)
    names = ["base model"] + [name for name, _ in fits]
    nll = [fits[0][1]["fit"]["heldout_nll_uncontrolled"]] + [f["fit"]["heldout_nll_controlled"] for _, f in fits]
    bars = right.barh(np.arange(len(names)), nll, color=["grey"] + ["C2"] * len(fits))
    right.bar_label(bars, fmt="%.3f", fontsize=8)
    right.set_yticks(np.arange(len(names)), names, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("held-out action NLL per step (D*)")
    right.set_title("supervised controllers indexed by", fontsize=10)
    rolled = [(name, f["modes"]["sampled"]["controlled"]) for name, f in fits if "sampled" in f.get("modes", {})]
    evaluations = (("single", "single"), ("override", "override h-g"), ("chained_posttrain", "chained 12-colour"))
    for k, (key, label) in enumerate(evaluations):
        values = [r[key]["normalised_success"] for _, r in rolled]
        bars = steer.bar(np.arange(len(rolled)) + (k - 1) * 0.27, values, 0.27, label=label)
        steer.bar_label(bars, fmt="%.2f", fontsize=7)
    steer.set_xticks(np.arange(len(rolled)), [name for name, _ in rolled], fontsize=8)
    steer.set_ylabel("expert-normalised success (sampled)")
    steer.set_ylim(0, 1)
    steer.legend(fontsize=8, loc="upper left")
    steer.set_title("rolled out with those controllers", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
