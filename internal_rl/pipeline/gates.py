"""The headline's chain as three gates, judged from a run's results: where does it break?

The paper's headline (internal RL solves a long unseen composition where raw-action RL fails) rests on a
chain: linear controllers at mid-depth steer the frozen base model to a subgoal (G1, controllability), the
metacontroller's codes name subgoals (G2), and RL over those codes learns the composition (G3). Each gate
compares expert-normalised figures of `results.json` with a threshold; the first gate that fails, or that
the run did not measure, is the link that stops the headline. The thresholds are the project's reading of
the paper (its supervised controllers reach 0.5-0.7 on the grid's post-training task; its internal RL about
0.9 of the expert while raw-action RL stays near 0).
"""

from typing import Any

# G1: supervised controllers at the controlled layer, success / expert's success on the same layouts.
CONTROL_THRESHOLDS = {"single": 0.8, "override": 0.8, "chained_post_training": 0.5}
# G2: a linear probe from each true segment's code to its subgoal, and the discovered controllers (k-means
# centres of the segment codes) held on fresh layouts, single and across unseen transitions, against the
# supervised controllers' success on the same layouts.
CODE_PROBE_THRESHOLD = 0.9
# Relative figures only mean something where the supervised controllers steer, i.e. once G1 passes.
DISCOVERED_THRESHOLDS = {"single": 0.8, "override": 0.8}
# G3: internal RL's normalised held-out success, and the ceiling for the baselines at the same budget.
HEADLINE_THRESHOLD = 0.9
BASELINE_CEILING = 0.1
# The milestone on the way (issue's budget note): internal >= 5x raw-action RL, raw at <= 0.05 normalised.
MILESTONE_RATIO = 5.0
MILESTONE_RAW_CEILING = 0.05
BASELINES = ("raw", "no-switch")
LABEL_FREE = "label-free"  # rl/training.LABEL_FREE (not imported: the gates read results only)
GATE_NAMES = {"G1": "controllability", "G2": "codes name subgoals", "G3": "internal RL learns the composition"}


def _control_gate(results: dict[str, Any]) -> dict[str, Any]:
    steering = results.get("steering") or {}
    measured = {name: (steering.get(name) or {}).get("normalised_success") for name in CONTROL_THRESHOLDS}
    return {"measured": measured, "thresholds": dict(CONTROL_THRESHOLDS),
            "passed": None if None in measured.values() else all(
                measured[k] >= t for k, t in CONTROL_THRESHOLDS.items())}


def _code_gate(results: dict[str, Any]) -> dict[str, Any]:
    switching = results.get("switching") or {}
    probe = switching.get("code_probe") or {}
    place = (switching.get("code_names_place") or {}).get("subgoal_through_layout") or {}
    discovered = switching.get("discovered_steering") or {}
    relative = {f"discovered_{name}": (discovered.get(name) or {}).get("relative_to_supervised")
                for name in DISCOVERED_THRESHOLDS}
    measured = {"code_probe": probe.get("accuracy"), "majority": probe.get("majority"),
                "subgoal_through_layout": place.get("accuracy"), **relative}
    thresholds = {"code_probe": CODE_PROBE_THRESHOLD, **{f"discovered_{k}": t for k, t in DISCOVERED_THRESHOLDS.items()}}
    failed = any(measured[k] is not None and measured[k] < t for k, t in thresholds.items())
    passed = False if failed else (True if all(measured[k] is not None for k in thresholds) else None)
    return {"measured": measured, "thresholds": thresholds, "passed": passed}


def _headline_gate(results: dict[str, Any], posttrain_task: list[int] | None) -> dict[str, Any]:
    methods = results.get("methods") or {}
    measured = {name: methods[name].get("normalised_success") for name in ("internal", *BASELINES) if name in methods}
    label_free = (methods.get(LABEL_FREE) or {}).get("normalised_success")
    internal = methods.get("internal") or {}
    gate: dict[str, Any] = {
        "measured": measured,
        "thresholds": {"internal": HEADLINE_THRESHOLD, **{b: BASELINE_CEILING for b in BASELINES}},
        "task": internal.get("task"), "seeds": internal.get("seeds"), "episodes": internal.get("episodes"),
    }
    gate["on_posttrain_task"] = None if posttrain_task is None or not internal else internal.get("task") == posttrain_task
    if None in measured.values() or set(measured) != {"internal", *BASELINES}:
        gate["passed"] = None
    else:
        gate["passed"] = bool(gate["on_posttrain_task"] is not False and measured["internal"] >= HEADLINE_THRESHOLD
                              and all(measured[b] <= BASELINE_CEILING for b in BASELINES))
    # The milestone, for internal RL and for the label-free deviation (which cannot pass G3 itself).
    raw = measured.get("raw")
    reached = {name: bool(raw <= MILESTONE_RAW_CEILING and ours > 0 and ours >= MILESTONE_RATIO * raw)
               for name, ours in (("internal", measured.get("internal")), (LABEL_FREE, label_free))
               if raw is not None and ours is not None}
    gate["milestone"] = any(reached.values()) if reached else None
    gate["milestone_by"] = [name for name, ok in reached.items() if ok]
    if label_free is not None:
        gate["label_free"] = label_free
    return gate


def judge_gates(results: dict[str, Any], posttrain_task: list[int] | None = None) -> dict[str, Any]:
    """G1-G3 from a run's results (`collect_results`): each with its measured figures, thresholds and `passed`
    (None when the run did not measure it), and `first_failing`, the first gate in the chain that did not
    pass (None when all three did). `posttrain_task` is the environment's post-training task, on which G3
    is defined; RL on another task cannot pass G3."""
    gates = {"G1": _control_gate(results), "G2": _code_gate(results), "G3": _headline_gate(results, posttrain_task)}
    for key, gate in gates.items():
        gate["name"] = GATE_NAMES[key]
    failing = [key for key, gate in gates.items() if gate["passed"] is not True]
    return {**gates, "first_failing": failing[0] if failing else None}
