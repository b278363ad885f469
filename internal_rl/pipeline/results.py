"""The figures of a run, gathered from the result files of its run folder (`RunFolder` says where) into
one JSON-ready dict, one section per stage: what `results.json` holds and `report.md` states. A stage
whose files are missing is left out."""

from pathlib import Path
from typing import Any

import numpy as np

from internal_rl.common.config import load_json
from internal_rl.data.dataset import MANIFEST
from internal_rl.envs.registry import ENVS
from internal_rl.pipeline.gates import judge_gates
from internal_rl.pipeline.run_folder import COMPILE_DIR, COTRAINED_DIR, METACONTROLLER_DIR, NO_SWITCH_DIR, RunFolder

SUCCESS_TARGET = 0.9
METHOD_NAMES = {
    "internal": "internal RL (metacontroller codes, learned switching)",
    "raw": "raw-action RL (finetune the base model's actions)",
    "no-switch": "no temporal abstraction (beta = 1, a code every step)",
    "cotrained": "metacontroller co-trained with its base model",
    "compile": "CompILE codes and boundaries (Kipf et al., 2019)",
    "label-free": "internal RL over label-free codes (k-means codes, HMM switch; a deviation)",
}
# The metacontroller rows of results.json, by their key, and the stage whose switching analysis each is read from.
SWITCHING_STAGES = {"switching": METACONTROLLER_DIR, "switching_no_switch": NO_SWITCH_DIR,
                    "switching_cotrained": COTRAINED_DIR, "switching_compile": COMPILE_DIR}
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


def method_dirs(run: Path) -> list[Path]:
    """RUN/rl/<method>/ folders, in the order of METHOD_NAMES (so that a method keeps its colour), then others."""
    order = list(METHOD_NAMES)
    dirs = RunFolder(run).rl_methods()
    return sorted(dirs, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def rl_summary(run: Path) -> dict[str, Any]:
    """Per-method figures over seeds from RUN/rl/<method>/seed_*.json."""
    methods = {}
    for method_dir in method_dirs(run):
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


_MANIFEST_KEYS = ("env", "episodes", "steps", "seed", "expert_success_rate", "expert_epsilon", "expert_mean_actions")


def _run_results(run: RunFolder) -> dict[str, Any]:
    """The preset and environment `reproduce` recorded, and the shipped models it installed."""
    results: dict[str, Any] = {}
    reproduce = _load(run.reproduce_record)
    if reproduce:
        results["preset"] = reproduce.get("preset")
        results["env"] = reproduce.get("env")
        shipped = (reproduce.get("config") or {}).get("shipped")
        if shipped:  # the stages that installed shipped models instead of training them
            results["shipped"] = shipped
    return results


def _data_results(run: RunFolder) -> dict[str, Any]:
    """The datasets D and D* (their manifests' figures)."""
    results: dict[str, Any] = {}
    manifest = _load(run.data / MANIFEST)
    if manifest:
        results["data"] = {k: manifest.get(k) for k in _MANIFEST_KEYS if k in manifest}
    clean = _load(run.clean_data / MANIFEST)
    if clean:
        results["data_clean"] = {k: clean.get(k) for k in _MANIFEST_KEYS if k in clean}
    return results


def _probe_results(probes: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy_by_layer": {str(r["layer"]): r["accuracy"] for r in probes["layers"]},
        "best_layer": probes["best_layer"],
        "majority_baseline": probes["majority_baseline"],
    }


def _steering_results(steering: dict[str, Any]) -> dict[str, Any]:
    return {
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


def _switching_results(key: str, report: dict[str, Any], steering: dict[str, Any] | None) -> dict[str, Any]:
    """One metacontroller stage's switching analysis, with the supervised controllers' NLL at its hook."""
    result = {
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
        result["active_code_dimensions"] = report["code_dimensions"]["active"]
        result["code_dimensions"] = report["code_dimensions"]["n_z"]
    if "code_probe" in report:
        probe = report["code_probe"]
        result["code_probe"] = {"accuracy": probe["accuracy"], "majority": probe["majority"],
                                "given_previous": probe["given_previous"]}
    if "code_content" in report:
        content = report["code_content"]
        result["code_names_place"] = {"subgoal_through_layout": content["subgoal_through_place"],
                                      "cell_r2": content["place_r2"]}
    if "discovered_steering" in report:  # the discovered controllers held, as the supervised ones are
        keys = ("success", "expert_success", "normalised_success", "supervised_success", "relative_to_supervised")
        result["discovered_steering"] = {name: {k: report["discovered_steering"][key][k] for k in keys}
                                         for name, key in STEERING_EVALUATIONS.items()}
    hook = report["metacontroller"].get("hook")
    supervised = [r["fit"]["heldout_nll_controlled"] for r in (steering or {}).get("layers", []) if r["hook"] == hook]
    if supervised and key != "switching_cotrained":  # the supervised controllers steer the pretrained model
        result["supervised_subgoal_nll"] = supervised[0]
    return result


def collect_results(run: Path) -> dict[str, Any]:
    """Everything the report states, gathered from the run folder's result files."""
    folder = RunFolder(run)
    results: dict[str, Any] = {"run": str(folder.root), **_run_results(folder), **_data_results(folder)}
    pretrain = _load(folder.pretrain_eval)
    if pretrain:
        results["pretrain"] = pretrain
    probes = _load(folder.probes)
    if probes:
        results["probes"] = _probe_results(probes)
    steering = _load(folder.steering)
    if steering:
        results["steering"] = _steering_results(steering)
    for key, stage in SWITCHING_STAGES.items():
        report = _load(folder.switching(stage))
        if report:
            results[key] = _switching_results(key, report, steering)
    replay = _load(folder.code_replay())
    if replay:
        results["code_replay"] = {key: replay[key] for key in REPLAY_KEYS if key in replay}
    results["methods"] = rl_summary(folder.root)
    videos = _load(folder.videos_record)
    if videos:
        results["videos"] = {name: {k: v[k] for k in ("task", "success", "length")} for name, v in videos.items()}
    env = results.get("env") or (results.get("data") or {}).get("env")
    results["gates"] = judge_gates(results, list(ENVS[env].posttrain_task) if env in ENVS else None)
    markers = sorted(folder.stage_markers.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)  # in the order run
    stages = {p.stem: load_json(p).get("seconds") for p in markers}
    if stages:
        results["stage_seconds"] = stages
    return results
