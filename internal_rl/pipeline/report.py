"""The run report: `results.json` (machine-readable figures, `pipeline/results.py`) and `report.md` (tables
and plots), both built from the result files a run folder holds (`RunFolder` says where), never by hand. A
missing stage is reported as missing. Each section of report.md is one function, in the order the paper reads."""

import math
from pathlib import Path
from typing import Any

from internal_rl.analysis.plots import plot_curves
from internal_rl.common.config import load_json, save_json, save_text
from internal_rl.common.errors import ConfigError
from internal_rl.pipeline.gates import BASELINE_CEILING, MILESTONE_RATIO, MILESTONE_RAW_CEILING
from internal_rl.pipeline.results import METHOD_NAMES, REPLAY_ROWS, STEERING_EVALUATIONS, collect_results, method_dirs
from internal_rl.pipeline.run_folder import RunFolder

# The metacontroller rows of the report, by their key in results.json.
METACONTROLLER_NAMES = {"switching": "learned switching", "switching_no_switch": "beta = 1 ablation",
                        "switching_cotrained": "co-trained with the base model", "switching_compile": "CompILE"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _image(run: Path, name: str, caption: str) -> list[str]:
    return [f"![{caption}]({name})", ""] if (run / name).is_file() else [f"_({name} missing)_", ""]


HEADLINE_FIGURE = "figures/rl_normalised_success.png"  # relative to the run folder, as report.md links it


def _normalised_runs(seeds: list[dict[str, Any]]) -> list[list[tuple[float, float]]] | None:
    """Per seed: (1, held-out success before training) then (episodes, training-batch success), each divided
    by the expert's held-out success; None for results that lack the expert's."""
    if not all(s.get("expert_eval", {}).get("success_rate") for s in seeds):
        return None
    return [
        [(1.0, s["initial_eval"]["success_rate"] / s["expert_eval"]["success_rate"])]
        + [(float(r["episodes"]), r["success_rate"] / s["expert_eval"]["success_rate"]) for r in s["curve"]]
        for s in seeds
    ]


def plot_rl_curves(run: Path) -> list[str]:
    """Success-rate curves over seeds vs episodes and vs low-level env steps; returns the file names."""
    curves_episodes, curves_steps, normalised = {}, {}, {}
    for method_dir in method_dirs(run):
        seeds = [load_json(p) for p in sorted(method_dir.glob("seed_*.json"))]
        if not seeds:
            continue
        runs = _normalised_runs(seeds)
        if runs is not None:
            normalised[method_dir.name] = runs
        curves_episodes[method_dir.name] = [[(r["episodes"], r["success_rate"]) for r in s["curve"]] for s in seeds]
        curves_steps[method_dir.name] = [[(r["env_steps"], r["success_rate"]) for r in s["curve"]] for s in seeds]
        task = "-".join(map(str, seeds[0]["task"]))
    if not curves_episodes:
        return []
    folder = RunFolder(run)
    names = []
    if normalised:
        plot_curves(normalised, "episodes (log scale)", "success / expert's success on the same layouts",
                    folder.root / HEADLINE_FIGURE, stat="median", logx=True, ylim=(-0.02, 1.1),
                    references={"expert": 1.0}, title=f"task {task}, sparse reward")
        names.append(HEADLINE_FIGURE)
    for curves, xlabel, name in (
        (curves_episodes, "episodes", "rl_success_vs_episodes.png"),
        (curves_steps, "low-level env steps", "rl_success_vs_env_steps.png"),
    ):
        path = folder.figures / name
        plot_curves(curves, xlabel, "training-batch success rate", path, ylim=(-0.02, 1.02),
                    title=f"task {task}, sparse reward")
        names.append(path.relative_to(folder.root).as_posix())
    return names


def _explained_lines(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What the codes explain: held-out action NLL without and with them, against supervised subgoal controllers."""
    rows = [(k, s) for k, s in rows if "base_action_nll" in s]
    if not rows:
        return []
    lines = ["| metacontroller | action NLL, base model alone | with the metacontroller | with supervised subgoal "
             "controllers | KL rate, nats / episode | active code dimensions |", "|---|---|---|---|---|---|"]
    for key, s in rows:
        name = METACONTROLLER_NAMES[key]
        active = f"{s['active_code_dimensions']} of {s['code_dimensions']}" if "active_code_dimensions" in s else "-"
        lines.append(f"| {name} | {_fmt(s['base_action_nll'])} | {_fmt(s['action_nll'])} "
                     f"| {_fmt(s.get('supervised_subgoal_nll'))} | {_fmt(s['kl_per_episode'], 2)} | {active} |")
    return lines + ["", "Action NLL is per step on held-out episodes (the co-trained metacontroller's against its own "
                    "base model). The supervised controllers (the steering stage, "
                    "same layer, told the true subgoal) show what subgoal information is worth to this base model; "
                    "a metacontroller with no NLL gain at a KL rate near 0 has collapsed to ignoring its codes. "
                    "A code dimension is active when its variance across segments exceeds 0.01.", ""]


def _code_probe_lines(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Do the codes name the subgoal, or a place? The code read-outs of the switching analysis, against chance."""
    places = {k: s["code_names_place"] for k, s in rows if s.get("code_names_place")}
    rows = [(k, s["code_probe"]) for k, s in rows if s.get("code_probe")]
    if not rows:
        return []
    lines = ["| metacontroller | code -> subgoal, linear probe | majority guess | given the previous subgoal | majority guess "
             "| subgoal through the layout | its baseline |",
             "|---|---|---|---|---|---|---|"]
    for key, probe in rows:
        name = METACONTROLLER_NAMES[key]
        given = probe.get("given_previous") or {}
        place = places.get(key, {}).get("subgoal_through_layout") or {}
        lines.append(f"| {name} | {_fmt(probe['accuracy'])} | {_fmt(probe['majority'])} "
                     f"| {_fmt(given.get('accuracy'))} | {_fmt(given.get('majority'))} "
                     f"| {_fmt(place.get('accuracy'))} | {_fmt(place.get('baseline'))} |")
    return lines + ["", "Each true segment's mean code, read out by a logistic regression (5-fold cross-validation). "
                    "A probe at the majority guess means the codes do not name the subgoal (in the paper they "
                    "cluster by subgoal): internal RL must then find, layout by layout, the codes that lead to it. "
                    "Through the layout (grid world): the subgoal whose first colour lies nearest the cell a linear "
                    "read-out of the code predicts, against the subgoal nearest the agent; high there and at the "
                    "majority by name means the codes name places (`analysis/code_content.py`).", ""]


def _code_replay_lines(replay: dict[str, Any] | None) -> list[str]:
    """How far the codes inferred from expert demonstrations take the base model on the RL task."""
    if not replay:
        return []
    task = "-".join(str(c) for c in replay["task"])
    lines = [f"Code replay on the RL task {task} ({replay['solvable_layouts']} layouts the expert solves):", "",
             "| codes | success | colours reached | decisions per episode |", "|---|---|---|---|"]
    for key, name in REPLAY_ROWS.items():
        if key in replay:
            r = replay[key]
            lines.append(f"| {name} | {_fmt(r['success'])} | {_fmt(r['colours_reached'], 2)} | "
                         f"{_fmt(r['decisions_per_episode'], 2)} |")
    return lines + ["", "The metacontroller's encoder reads each expert demonstration; its codes are then replayed, one per "
                    "switch, in the internal-RL environment on the same layouts. Internal RL starts from the prior; "
                    "replayed codes that barely beat it mean the code space does not carry what the task needs. The "
                    "two rows between are policies internal RL could learn: a fixed code per decision does as well as "
                    "the demonstrations only if the codes name subgoals; the linear read-out shows how much a policy "
                    "must read from its observation.", ""]


def _verdict(passed: bool | None) -> str:
    return {True: "passed", False: "**failed**", None: "not measured"}[passed]


def _gate_lines(results: dict[str, Any]) -> list[str]:
    """The headline's chain, gate by gate (`pipeline/gates.py`), and the first link that stops it."""
    gates = results.get("gates")
    if not gates:
        return []
    g1, g2, g3 = gates["G1"], gates["G2"], gates["G3"]
    control = ", ".join(f"{name.replace('_', ' ')} {_fmt(v)} (>= {g1['thresholds'][name]})"
                        for name, v in g1["measured"].items())
    probe = g2["measured"]
    codes = (f"code -> subgoal probe {_fmt(probe['code_probe'])} (>= {g2['thresholds']['code_probe']}; majority "
             f"{_fmt(probe['majority'])}; through the layout {_fmt(probe['subgoal_through_layout'])})")
    discovered_measured = bool((results.get("switching") or {}).get("discovered_steering"))
    if discovered_measured:
        codes += "; discovered controllers held, success relative to the supervised ones: " + ", ".join(
            f"{name} {_fmt(probe[f'discovered_{name}'])} (>= {g2['thresholds'][f'discovered_{name}']})"
            for name in ("single", "override"))
    task = "-".join(map(str, g3.get("task") or [])) or "n/a"
    rl = ", ".join(f"{METHOD_NAMES.get(k, k).split(' (')[0]} {_fmt(v)}" for k, v in g3["measured"].items()) or "no RL"
    rows = [("G1", g1, f"supervised controllers at layer L/2, normalised: {control}"),
            ("G2", g2, codes),
            ("G3", g3, f"normalised held-out success on {task}: {rl} (internal >= {g3['thresholds']['internal']}, "
                       f"baselines <= {BASELINE_CEILING}; {g3.get('seeds')} seeds, {g3.get('episodes')} episodes)")]
    lines = ["## The headline's chain", "", "| gate | measured | verdict |", "|---|---|---|"]
    lines += [f"| {key} {gate['name']} | {text} | {_verdict(gate['passed'])} |" for key, gate, text in rows]
    first = gates["first_failing"]
    verdict = ("All three gates pass: the headline reproduces." if first is None else
               f"The chain first stops at **{first} ({gates[first]['name']})**"
               + (": this run did not measure it." if gates[first]["passed"] is None else "."))
    if g3.get("on_posttrain_task") is False:
        verdict += f" RL ran on {task}, not on the post-training task, so G3 cannot pass here."
    if g3.get("milestone") is not None:
        by = ", ".join(METHOD_NAMES.get(k, k).split(" (")[0] for k in g3.get("milestone_by") or [])
        verdict += (f" Milestone (internal RL >= {MILESTONE_RATIO:g}x raw-action RL, raw <= {MILESTONE_RAW_CEILING} "
                    f"normalised): {f'reached by {by}' if g3['milestone'] else 'not reached'}.")
    if g3.get("label_free") is not None:
        verdict += (f" Internal RL over the label-free codes (a deviation, not judged by G3): "
                    f"{_fmt(g3['label_free'])} normalised.")
    if not discovered_measured:
        verdict += " G2's second half, the discovered controllers held on fresh layouts, is not measured here."
    return lines + ["", verdict + " The thresholds and their grounds: `internal_rl/pipeline/gates.py`.", ""]


def _rl_lines(run: Path, results: dict[str, Any], figures: list[str]) -> list[str]:
    """The report's opening section: RL on the post-training task, every method against the expert."""
    methods = results["methods"]
    tasks = sorted({"-".join(map(str, m["task"])) for m in methods.values() if m.get("task")})
    lines = [f"## RL on task {', '.join(tasks) or '(none)'} (sparse reward)", ""]
    if not methods:
        return lines + ["_no RL results_", ""]
    if len(tasks) > 1:  # `rl --task` on one run with other tasks: say so, and name each row's task
        lines += [f"**The methods ran on {len(tasks)} different tasks: compare rows of the same task only.**", ""]
    lines += _image(run, HEADLINE_FIGURE, "expert-normalised success against episodes, every method")
    task_column = len(tasks) > 1
    lines += ["| method |" + (" task |" if task_column else "") + " normalised success at the end | held-out success "
              "(start -> end) | expert on the same layouts | episodes to 90% of the expert | episodes | low-level env "
              "steps | seeds |", "|---|" + ("---|" if task_column else "") + "---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        task = f" {'-'.join(map(str, m.get('task') or []))} |" if task_column else ""
        lines.append(f"| {METHOD_NAMES.get(name, name)} |{task} {_fmt(m.get('normalised_success'))} | "
                     f"{_fmt(m['initial_success'])} -> {_fmt(m['final_success'])} | {_fmt(m.get('expert_success'))} "
                     f"| {_fmt(m.get('episodes_to_90_of_expert'))} | {m['episodes']} | {m['env_steps']} | {m['seeds']} |")
    lines += ["", "Paper target: internal RL >= 0.9 of the expert where raw-action RL stays near 0. Normalised "
              "success divides the held-out success (mean over seeds) by the noiseless expert's on the same "
              "held-out layouts, since some layouts cannot be solved. The figure shows the median over seeds with "
              "the 25-75% band: the first point of each curve is the held-out success before training, the rest "
              "the training batches' success.", ""]
    for name in figures:
        if name != HEADLINE_FIGURE:
            lines += _image(run, name, name)
    return lines


def _opening_lines(run: RunFolder, results: dict[str, Any]) -> list[str]:
    lines = [f"# internal-rl report: {run.root.name}", ""]
    lines += [f"Preset: `{results.get('preset', 'n/a')}`. Every figure below is read from the files in this folder; "
              "`results.json` holds the same numbers.", ""]
    if results.get("shipped"):
        lines += [f"The base model and the metacontrollers are the shipped `{results['shipped']}` models "
                  f"(`internal_rl/shipped/{results['shipped']}/provenance.json`: how they were trained); every "
                  "other stage ran here.", ""]
    return lines


def _data_lines(results: dict[str, Any]) -> list[str]:
    lines = ["## Data", ""]
    data = results.get("data")
    if not data:
        return lines + ["_no dataset_", ""]
    noise = (f"epsilon {data.get('expert_epsilon')}" if data.get("env", "gridworld") == "gridworld"
             else "its stochastic Gaussian policy")
    lines += [f"Environment `{data.get('env', 'gridworld')}`. {data.get('episodes')} successful expert episodes "
              f"({data.get('steps')} steps) on the 16 pretraining tasks; the expert ({noise}) succeeded on "
              f"{_fmt(data.get('expert_success_rate'))} of the episodes it attempted (the failed ones are "
              "discarded).", ""]
    clean = results.get("data_clean")
    if clean:
        lines += [f"Cleaner data D* (the expert's noiseless actions) for the supervised controllers and the "
                  f"metacontroller: {clean.get('episodes')} episodes ({clean.get('steps')} steps), expert success "
                  f"{_fmt(clean.get('expert_success_rate'))}.", ""]
    return lines


def _base_model_lines(results: dict[str, Any]) -> list[str]:
    lines = ["## Base model", ""]
    pretrain = results.get("pretrain")
    if not pretrain:
        return lines + ["_no pretrained model_", ""]
    held = pretrain.get("held_out", {})
    expert = pretrain.get("expert") if isinstance(pretrain.get("expert"), dict) else {}
    lines += ["| held-out next-action accuracy | expert's own ceiling | held-out action NLL | held-out next-obs NLL |",
              "|---|---|---|---|",
              f"| {_fmt(held.get('action_accuracy'))} | {_fmt(expert.get('accuracy_ceiling'))} "
              f"| {_fmt(held.get('action_nll'))} | {_fmt(held.get('obs_nll'))} |", ""]
    by_target = held.get("by_target")
    if by_target and "accuracy_ceiling" in by_target[0]:
        lines += ["Held-out next-action accuracy by the target's position in the task (grid world: even positions "
                  "are a colour pair's first colour, inferred from the task's history; odd ones its second, "
                  "which follows from the colour just visited):", "",
                  "| target position | " + " | ".join(str(g["target_index"]) for g in by_target) + " |",
                  "|---|" + "---|" * len(by_target),
                  "| base model | " + " | ".join(_fmt(g.get("action_accuracy")) for g in by_target) + " |",
                  "| expert's ceiling | " + " | ".join(_fmt(g.get("accuracy_ceiling")) for g in by_target) + " |", ""]
    rollouts = pretrain.get("rollouts")
    if isinstance(rollouts, str):
        lines += [f"Free rollouts: {rollouts}.", ""]
    elif rollouts:
        lines += [f"Free rollouts of the base model (no task given): {_fmt(rollouts.get('valid_task_fraction'))} of "
                  f"episodes visit a valid pretraining task; {_fmt(rollouts.get('mean_subgoals_completed'), 2)} "
                  "subgoals completed on average.", ""]
    return lines


def _probe_lines(run: RunFolder, results: dict[str, Any]) -> list[str]:
    lines = ["## Linear probes of the current subgoal", ""]
    probes = results.get("probes")
    if not probes:
        return lines + ["_no probes_", ""]
    lines += ["| layer | " + " | ".join(probes["accuracy_by_layer"]) + " |",
              "|---|" + "---|" * len(probes["accuracy_by_layer"]),
              "| held-out accuracy | " + " | ".join(_fmt(v) for v in probes["accuracy_by_layer"].values()) + " |",
              "", f"Majority-class baseline {_fmt(probes['majority_baseline'])}; best layer {probes['best_layer']} "
              "(layer 0 is the residual stream before the first block).", ""]
    return lines + _image(run.root, run.probes_plot.name, "probe accuracy by layer")


def _steering_lines(run: RunFolder, results: dict[str, Any]) -> list[str]:
    lines = ["## Supervised subgoal controllers (e + U_g e) by layer", ""]
    steering = results.get("steering")
    if not steering:
        return lines + ["_no steering results_", ""]
    chained = "-".join(map(str, steering.get("chained_task") or [])) or "post-training task"
    lines += [f"| layer | single-subgoal success | chained, task {chained} |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['single'])} | {_fmt(v['chained_posttrain'])} |" for k, v in steering["by_layer"].items()]
    lines += ["", f"Best steering layer: {steering.get('best_layer')}.", ""]
    if "controlled_layer" in steering:
        lines += [f"At the controlled layer {steering['controlled_layer']}, against the noiseless expert on the "
                  "same layouts (override: the two-subgoal tasks whose transition pretraining never shows):", "",
                  "| evaluation | success | expert | normalised | uncontrolled | wrong colour | timeout |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(v['success'])} | {_fmt(v['expert_success'])} | "
                  f"{_fmt(v['normalised_success'])} | {_fmt(v['uncontrolled'])} | {_fmt(v['wrong_colour'])} | "
                  f"{_fmt(v['timeout'])} |" for name, v in ((n, steering[n]) for n in STEERING_EVALUATIONS)]
        lines += [""]
    return lines + _image(run.root, run.steering_plot.name, "steering success by layer")


def _metacontroller_lines(run: RunFolder, results: dict[str, Any]) -> list[str]:
    lines = ["## Metacontroller: unsupervised switching", ""]
    rows = [(k, results[k]) for k in METACONTROLLER_NAMES if k in results]
    if not rows:
        return lines + ["_no metacontroller_", ""]
    lines += ["| metacontroller | switch F1 (+-2 steps) | precision | recall | F1 against colour changes "
              "| NMI(z, subgoal) | switches / episode | mean segment length | true subgoal length |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, s in rows:
        name = METACONTROLLER_NAMES[key]
        lines.append(f"| {name} | {_fmt(s['f1'])} | {_fmt(s['precision'])} | {_fmt(s['recall'])} "
                     f"| {_fmt(s.get('colour_f1'))} | {_fmt(s['nmi'])} "
                     f"| {_fmt(s['switches_per_episode'], 2)} | {_fmt(s['mean_segment_length'], 1)} "
                     f"| {_fmt(s['true_mean_subgoal_length'], 1)} |")
    grid = results.get("env") in (None, "gridworld")
    lines += ["", "Paper target: switch F1 >= 0.9 with quasi-binary beta aligned with subgoal changes (a subgoal "
              + ("is a colour pair). The F1 against every colour change shows a metacontroller that segments at "
                 "single colours instead." if grid else "is one colour here, so both F1s agree)."), ""]
    lines += _explained_lines(rows)
    lines += _code_probe_lines(rows)
    lines += _code_replay_lines(results.get("code_replay"))
    lines += _discovered_steering_lines((results.get("switching") or {}).get("discovered_steering"),
                                        results.get("steering") or {})
    return lines + _image(run.root, run.switching_plot().name, "beta traces with true subgoal switches")


def _discovered_steering_lines(discovered: dict[str, Any] | None, steering: dict[str, Any]) -> list[str]:
    """The discovered controllers (k-means centres of the segment codes) held as the supervised ones are,
    beside the supervised controllers and the uncontrolled model on the same layouts."""
    if not discovered:
        return []
    lines = ["The metacontroller's discovered controllers (k-means centres of its segment codes; each subgoal gets "
             "the centre holding most of its segments) held as the supervised controllers are, on the same "
             "layouts:", "",
             "| evaluation | success | expert | normalised | supervised controllers | relative to supervised "
             "| uncontrolled |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {_fmt(v['success'])} | {_fmt(v['expert_success'])} | {_fmt(v['normalised_success'])} "
              f"| {_fmt(v['supervised_success'])} | {_fmt(v['relative_to_supervised'], 2)} "
              f"| {_fmt((steering.get(name) or {}).get('uncontrolled'))} |" for name, v in discovered.items()]
    return lines + [""]


def _video_lines(results: dict[str, Any]) -> list[str]:
    if "videos" not in results:
        return []
    lines = ["## Videos", "", "| episode | task | success | steps |", "|---|---|---|---|"]
    lines += [f"| [{name}](videos/{name}.gif) | {'-'.join(map(str, v['task']))} | {v['success']} | {v['length']} |"
              for name, v in results["videos"].items()]
    return lines + ["", "Expert on the post-training task; the base model alone on a pretraining task; each supervised "
                    "controller U_g of layer L/2 on the one-colour task g; the controllers chained on the post-training "
                    "task; each of the metacontroller's discovered controllers (a k-means centre of its segment codes, "
                    "`switching.json` `controllers`) held from the first step on the post-training task. The next "
                    "colour to visit is framed in black.", ""]


def _stage_time_lines(results: dict[str, Any]) -> list[str]:
    if "stage_seconds" not in results:
        return []
    lines = ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v, 0)} |" for k, v in results["stage_seconds"].items()]
    return lines + [""]


def write_report(run: Path) -> Path:
    """Write RUN/results.json and RUN/report.md (with RL curve figures); return the report's path.

    RUN must be a run folder (one with a pretrained base model, RL results, or started by `reproduce`): a
    report is never written into a dataset or any other folder."""
    folder = RunFolder(run)
    if not folder.root.is_dir():
        raise ConfigError(f"--run {run}: not a folder; expected a run folder (from `reproduce` or `pretrain --out`)")
    if not (folder.pretrain.is_dir() or folder.rl.is_dir() or folder.reproduce_record.is_file()):
        raise ConfigError(f"--run {run}: not a run folder (it has no pretrain/, rl/ or reproduce.json); "
                          "nothing written")
    results = collect_results(folder.root)
    figures = plot_rl_curves(folder.root)
    save_json(folder.results, results)
    lines = _opening_lines(folder, results)
    lines += _gate_lines(results)
    lines += _rl_lines(folder.root, results, figures)
    lines += _data_lines(results)
    lines += _base_model_lines(results)
    lines += _probe_lines(folder, results)
    lines += _steering_lines(folder, results)
    lines += _metacontroller_lines(folder, results)
    lines += _video_lines(results)
    lines += _stage_time_lines(results)
    save_text(folder.report, "\n".join(lines))
    return folder.report
