"""The run report: `results.json` (machine-readable figures) and `report.md` (tables and plots), both
built from the result files a run folder holds, never by hand. A missing stage is reported as missing."""

import math
from pathlib import Path
from typing import Any

import numpy as np

from internal_rl.common.config import load_json, save_json, save_text
from internal_rl.common.errors import ConfigError

SUCCESS_TARGET = 0.9
METHOD_NAMES = {
    "internal": "internal RL (metacontroller codes, learned switching)",
    "raw": "raw-action RL (finetune the base model's actions)",
    "no-switch": "no temporal abstraction (beta = 1, a code every step)",
    "cotrained": "metacontroller co-trained with its base model",
    "compile": "CompILE codes and boundaries (Kipf et al., 2019)",
}
# The metacontroller rows, by their key in results.json, and the switching analysis each is read from.
METACONTROLLER_NAMES = {"switching": "learned switching", "switching_no_switch": "beta = 1 ablation",
                        "switching_cotrained": "co-trained with the base model", "switching_compile": "CompILE"}
SWITCHING_FILES = {"switching": "switching.json", "switching_no_switch": "switching_metacontroller-no-switch.json",
                   "switching_cotrained": "switching_metacontroller-cotrained.json",
                   "switching_compile": "switching_compile.json"}
# The code-replay rows (analysis/code_replay.py), by their key in code_replay.json.
REPLAY_ROWS = {
    "demonstration": "inferred from expert demonstrations",
    "residual_linear": "predicted from the residual e at each decision (ridge fit on other layouts' demonstrations)",
    "mean_code": "each decision's mean demonstration code, on every layout",
    "prior": "drawn from the prior N(0, I)",
}
REPLAY_KEYS = ("task", "solvable_layouts", *REPLAY_ROWS)


def _load(path: Path) -> Any | None:
    return load_json(path) if Path(path).is_file() else None


def _episodes_to(curve: list[dict[str, Any]], target: float) -> int | None:
    """Episodes consumed when a training batch first reached `target` success (None if never)."""
    for record in curve:
        if record["success_rate"] >= target:
            return int(record["episodes"])
    return None


def _method_dirs(run: Path) -> list[Path]:
    """RUN/rl/<method>/ folders, in the order of METHOD_NAMES (so that a method keeps its colour), then others."""
    order = list(METHOD_NAMES)
    dirs = [p for p in (Path(run) / "rl").glob("*") if p.is_dir()]
    return sorted(dirs, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def rl_summary(run: Path) -> dict[str, Any]:
    """Per-method figures over seeds from RUN/rl/<method>/seed_*.json."""
    methods = {}
    for method_dir in _method_dirs(run):
        seeds = [load_json(p) for p in sorted(method_dir.glob("seed_*.json"))]
        if not seeds:
            continue
        final = [s["final_eval"]["success_rate"] for s in seeds]
        initial = [s["initial_eval"]["success_rate"] for s in seeds]
        # The expert's success on the same held-out layouts (absent from results written before it was kept).
        experts = [s["expert_eval"]["success_rate"] for s in seeds if "expert_eval" in s]
        expert = float(np.mean(experts)) if len(experts) == len(seeds) else None
        to_target = [_episodes_to(s["curve"], SUCCESS_TARGET) for s in seeds]
        to_expert = [_episodes_to(s["curve"], SUCCESS_TARGET * s["expert_eval"]["success_rate"]) for s in seeds
                     if "expert_eval" in s]
        methods[method_dir.name] = {
            "task": seeds[0]["task"],
            "final_success": float(np.mean(final)),
            "final_success_by_seed": final,
            "initial_success": float(np.mean(initial)),
            "expert_success": expert,
            "normalised_success": float(np.mean(final)) / expert if expert else None,
            "initial_normalised_success": float(np.mean(initial)) / expert if expert else None,
            # Mean over seeds when every seed got there; null when any seed never did.
            "episodes_to_90": None if None in to_target else float(np.mean(to_target)),
            "episodes_to_90_by_seed": to_target,
            # The same, against 90% of the expert's success on the same layouts.
            "episodes_to_90_of_expert": (None if len(to_expert) < len(seeds) or None in to_expert
                                         else float(np.mean(to_expert))),
            "episodes": int(np.mean([s["episodes"] for s in seeds])),
            "env_steps": int(np.mean([s["env_steps"] for s in seeds])),
            "seeds": len(seeds),
            "seconds": float(np.mean([s["timing"]["seconds"] for s in seeds])),
            "rollout_episodes_per_second": float(np.mean([s["timing"]["rollout_episodes_per_second"] for s in seeds])),
        }
    return methods


STEERING_EVALUATIONS = {"single": "single", "override": "override", "chained_post_training": "chained_posttrain",
                        "chained_pretraining": "chained_pretrain"}


def _controlled_layer_steering(steering: dict[str, Any]) -> dict[str, Any]:
    """The supervised controllers at the controlled layer L/2, each evaluation with the expert's success on
    the same layouts and the normalised rate; empty for steering results without L/2 or without ceilings."""
    n_layers = steering.get("n_layers")
    rows = [r for r in steering["layers"] if n_layers and r["layer"] == n_layers // 2 and "override" in r]
    if not rows:
        return {}
    keys = ("success", "expert_success", "normalised_success", "wrong_colour", "timeout")
    out: dict[str, Any] = {"controlled_layer": rows[0]["layer"]}
    for name, key in STEERING_EVALUATIONS.items():
        out[name] = {k: rows[0][key][k] for k in keys}
        out[name]["uncontrolled"] = steering["baseline"][key]["success"]
    out["override"]["conditional"] = rows[0]["override"]["conditional"]
    return out


def collect_results(run: Path) -> dict[str, Any]:
    """Everything the report states, gathered from the run folder's result files."""
    run = Path(run)
    results: dict[str, Any] = {"run": str(run)}
    reproduce = _load(run / "reproduce.json")
    if reproduce:
        results["preset"] = reproduce.get("preset")
        results["env"] = reproduce.get("env")
        shipped = (reproduce.get("config") or {}).get("shipped")
        if shipped:  # the stages that installed shipped models instead of training them
            results["shipped"] = shipped
    keys = ("env", "episodes", "steps", "seed", "expert_success_rate", "expert_epsilon", "expert_mean_actions")
    manifest = _load(run / "data" / "manifest.json")
    if manifest:
        results["data"] = {k: manifest.get(k) for k in keys if k in manifest}
    clean = _load(run / "data-clean" / "manifest.json")
    if clean:
        results["data_clean"] = {k: clean.get(k) for k in keys if k in clean}
    pretrain = _load(run / "pretrain" / "eval.json")
    if pretrain:
        results["pretrain"] = pretrain
    probes = _load(run / "probes.json")
    if probes:
        results["probes"] = {
            "accuracy_by_layer": {str(r["layer"]): r["accuracy"] for r in probes["layers"]},
            "best_layer": probes["best_layer"],
            "majority_baseline": probes["majority_baseline"],
        }
    steering = _load(run / "steering.json")
    if steering:
        results["steering"] = {
            "by_layer": {
                str(r["layer"] if r["layer"] is not None else r["hook"]): {
                    "single": r["single"]["success"],
                    "chained_posttrain": r["chained_posttrain"]["success"],
                }
                for r in steering["layers"]
            },
            "best_layer": steering.get("best_layer"),
            "chained_task": steering.get("posttrain_task"),
            **_controlled_layer_steering(steering),
        }
    for key, name in SWITCHING_FILES.items():
        report = _load(run / name)
        if report:
            results[key] = {
                "f1": report["subgoal_switches"]["f1"],
                "precision": report["subgoal_switches"]["precision"],
                "recall": report["subgoal_switches"]["recall"],
                "colour_f1": report["colour_switches"]["f1"],
                "nmi": report["nmi"]["segment"],
                "nmi_step": report["nmi"]["step"],
                "mean_segment_length": report["segment_length"]["mean"],
                "true_mean_subgoal_length": report["true_subgoal_length"]["mean"],
                "switches_per_episode": report["switches_per_episode"],
                **{k: report[k] for k in ("action_nll", "base_action_nll", "kl_per_episode") if k in report},
            }
            if "code_dimensions" in report:
                results[key]["active_code_dimensions"] = report["code_dimensions"]["active"]
                results[key]["code_dimensions"] = report["code_dimensions"]["n_z"]
            if "code_probe" in report:
                probe = report["code_probe"]
                results[key]["code_probe"] = {"accuracy": probe["accuracy"], "majority": probe["majority"],
                                              "given_previous": probe["given_previous"]}
            hook = report["metacontroller"].get("hook")
            supervised = [r["fit"]["heldout_nll_controlled"] for r in (steering or {}).get("layers", []) if r["hook"] == hook]
            if supervised and key != "switching_cotrained":  # the supervised controllers steer the pretrained model
                results[key]["supervised_subgoal_nll"] = supervised[0]
    replay = _load(run / "code_replay.json")
    if replay:
        results["code_replay"] = {key: replay[key] for key in REPLAY_KEYS if key in replay}
    results["methods"] = rl_summary(run)
    videos = _load(run / "videos" / "videos.json")
    if videos:
        results["videos"] = {name: {k: v[k] for k in ("task", "success", "length")} for name, v in videos.items()}
    markers = sorted((run / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)  # in the order run
    stages = {p.stem: load_json(p).get("seconds") for p in markers}
    if stages:
        results["stage_seconds"] = stages
    return results


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _image(run: Path, name: str, caption: str) -> list[str]:
    return [f"![{caption}]({name})", ""] if (run / name).is_file() else [f"_({name} missing)_", ""]


HEADLINE_FIGURE = "figures/rl_normalised_success.png"


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
    from internal_rl.analysis.plots import plot_curves

    curves_episodes, curves_steps, normalised = {}, {}, {}
    for method_dir in _method_dirs(run):
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
    figures = Path(run) / "figures"
    names = []
    if normalised:
        plot_curves(normalised, "episodes (log scale)", "success / expert's success on the same layouts",
                    Path(run) / HEADLINE_FIGURE, stat="median", logx=True, ylim=(-0.02, 1.1),
                    references={"expert": 1.0}, title=f"task {task}, sparse reward")
        names.append(HEADLINE_FIGURE)
    for curves, xlabel, name in (
        (curves_episodes, "episodes", "rl_success_vs_episodes.png"),
        (curves_steps, "low-level env steps", "rl_success_vs_env_steps.png"),
    ):
        plot_curves(curves, xlabel, "training-batch success rate", figures / name, ylim=(-0.02, 1.02),
                    title=f"task {task}, sparse reward")
        names.append(f"figures/{name}")
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
    """Do the codes name the subgoal? The linear code probe of the switching analysis, against chance."""
    rows = [(k, s["code_probe"]) for k, s in rows if s.get("code_probe")]
    if not rows:
        return []
    lines = ["| metacontroller | code -> subgoal, linear probe | majority guess | given the previous subgoal | majority guess |",
             "|---|---|---|---|---|"]
    for key, probe in rows:
        name = METACONTROLLER_NAMES[key]
        given = probe.get("given_previous") or {}
        lines.append(f"| {name} | {_fmt(probe['accuracy'])} | {_fmt(probe['majority'])} "
                     f"| {_fmt(given.get('accuracy'))} | {_fmt(given.get('majority'))} |")
    return lines + ["", "Each true segment's mean code, read out by a logistic regression (5-fold cross-validation). "
                    "A probe at the majority guess means the codes do not name the subgoal (in the paper they "
                    "cluster by subgoal): internal RL must then find, layout by layout, the codes that lead to it.", ""]


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


def write_report(run: Path) -> Path:
    """Write RUN/results.json and RUN/report.md (with RL curve figures); return the report's path.

    RUN must be a run folder (one with a pretrained base model, RL results, or started by `reproduce`): a
    report is never written into a dataset or any other folder."""
    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"--run {run}: not a folder; expected a run folder (from `reproduce` or `pretrain --out`)")
    if not ((run / "pretrain").is_dir() or (run / "rl").is_dir() or (run / "reproduce.json").is_file()):
        raise ConfigError(f"--run {run}: not a run folder (it has no pretrain/, rl/ or reproduce.json); "
                          "nothing written")
    results = collect_results(run)
    figures = plot_rl_curves(run)
    save_json(run / "results.json", results)
    lines = [f"# internal-rl report: {run.name}", ""]
    lines += [f"Preset: `{results.get('preset', 'n/a')}`. Every figure below is read from the files in this folder; "
              "`results.json` holds the same numbers.", ""]
    if results.get("shipped"):
        lines += [f"The base model and the metacontrollers are the shipped `{results['shipped']}` models "
                  f"(`internal_rl/shipped/{results['shipped']}/provenance.json`: how they were trained); every "
                  "other stage ran here.", ""]
    lines += _rl_lines(run, results, figures)

    lines += ["## Data", ""]
    data = results.get("data")
    if data:
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
    else:
        lines += ["_no dataset_", ""]

    lines += ["## Base model", ""]
    pretrain = results.get("pretrain")
    if pretrain:
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
    else:
        lines += ["_no pretrained model_", ""]

    lines += ["## Linear probes of the current subgoal", ""]
    probes = results.get("probes")
    if probes:
        lines += ["| layer | " + " | ".join(probes["accuracy_by_layer"]) + " |",
                  "|---|" + "---|" * len(probes["accuracy_by_layer"]),
                  "| held-out accuracy | " + " | ".join(_fmt(v) for v in probes["accuracy_by_layer"].values()) + " |",
                  "", f"Majority-class baseline {_fmt(probes['majority_baseline'])}; best layer {probes['best_layer']} "
                  "(layer 0 is the residual stream before the first block).", ""]
        lines += _image(run, "probes.png", "probe accuracy by layer")
    else:
        lines += ["_no probes_", ""]

    lines += ["## Supervised subgoal controllers (e + U_g e) by layer", ""]
    steering = results.get("steering")
    if steering:
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
        lines += _image(run, "steering.png", "steering success by layer")
    else:
        lines += ["_no steering results_", ""]

    lines += ["## Metacontroller: unsupervised switching", ""]
    rows = [(k, results[k]) for k in METACONTROLLER_NAMES if k in results]
    if rows:
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
        lines += _image(run, "switching_beta.png", "beta traces with true subgoal switches")
    else:
        lines += ["_no metacontroller_", ""]

    if "videos" in results:
        lines += ["## Videos", "", "| episode | task | success | steps |", "|---|---|---|---|"]
        lines += [f"| [{name}](videos/{name}.gif) | {'-'.join(map(str, v['task']))} | {v['success']} | {v['length']} |"
                  for name, v in results["videos"].items()]
        lines += ["", "Expert on the post-training task; the base model alone on a pretraining task; each supervised "
                  "controller U_g of layer L/2 on the one-colour task g; the controllers chained on the post-training "
                  "task; each of the metacontroller's discovered controllers (a k-means centre of its segment codes, "
                  "`switching.json` `controllers`) held from the first step on the post-training task. The next "
                  "colour to visit is framed in black.", ""]

    if "stage_seconds" in results:
        lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 0)} |" for k, v in results["stage_seconds"].items()]
        lines.append("")

    path = run / "report.md"
    save_text(path, "\n".join(lines))
    return path
