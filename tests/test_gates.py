"""The headline's gates: planted results pass or fail exactly where their figures cross the thresholds."""

import copy

from internal_rl.pipeline.gates import judge_gates

TASK = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]


def passing_results() -> dict:
    steering = {name: {"normalised_success": value}
                for name, value in (("single", 0.9), ("override", 0.85), ("chained_post_training", 0.6))}
    methods = {name: {"normalised_success": value, "task": TASK, "seeds": 3, "episodes": 1000}
               for name, value in (("internal", 0.95), ("raw", 0.0), ("no-switch", 0.05))}
    switching = {"code_probe": {"accuracy": 0.95, "majority": 0.26},
                 "discovered_steering": {"single": {"relative_to_supervised": 0.9},
                                         "override": {"relative_to_supervised": 1.1}}}
    return {"steering": steering, "methods": methods, "switching": switching}


def test_all_gates_pass_on_planted_figures():
    gates = judge_gates(passing_results(), TASK)
    assert [gates[k]["passed"] for k in ("G1", "G2", "G3")] == [True, True, True]
    assert gates["first_failing"] is None
    assert gates["G3"]["milestone"] is True


def test_the_first_failing_gate_is_named_in_chain_order():
    results = passing_results()
    results["switching"]["code_probe"]["accuracy"] = 0.27
    results["methods"]["raw"]["normalised_success"] = 0.2  # a baseline above its ceiling fails G3 too
    gates = judge_gates(results, TASK)
    assert (gates["G1"]["passed"], gates["G2"]["passed"], gates["G3"]["passed"]) == (True, False, False)
    assert gates["first_failing"] == "G2"
    results["steering"]["override"]["normalised_success"] = 0.79
    assert judge_gates(results, TASK)["first_failing"] == "G1"


def test_an_unmeasured_gate_stops_the_chain_as_not_measured():
    results = passing_results()
    del results["steering"]
    gates = judge_gates(results, TASK)
    assert gates["G1"]["passed"] is None and gates["first_failing"] == "G1"
    results = passing_results()
    del results["methods"]["no-switch"]
    assert judge_gates(results, TASK)["G3"]["passed"] is None


def test_codes_name_subgoals_needs_the_probe_and_the_discovered_controllers():
    results = passing_results()
    results["switching"]["discovered_steering"]["override"]["relative_to_supervised"] = 0.79
    assert judge_gates(results, TASK)["G2"]["passed"] is False
    del results["switching"]["discovered_steering"]
    gates = judge_gates(results, TASK)  # a good probe alone: the second half not measured
    assert gates["G2"]["passed"] is None and gates["first_failing"] == "G2"
    results["switching"]["code_probe"]["accuracy"] = 0.5  # a failed half fails the gate, measured or not
    assert judge_gates(results, TASK)["G2"]["passed"] is False


def test_rl_on_another_task_cannot_pass_the_headline():
    results = copy.deepcopy(passing_results())
    for method in results["methods"].values():
        method["task"] = [0, 1, 2, 3]
    gates = judge_gates(results, TASK)
    assert gates["G3"]["on_posttrain_task"] is False and gates["G3"]["passed"] is False


def test_milestone_needs_five_times_raw_with_raw_near_zero():
    results = passing_results()
    results["methods"]["internal"]["normalised_success"] = 0.2
    results["methods"]["raw"]["normalised_success"] = 0.04
    assert judge_gates(results, TASK)["G3"]["milestone"] is True
    results["methods"]["raw"]["normalised_success"] = 0.041  # 0.2 < 5 x 0.041
    assert judge_gates(results, TASK)["G3"]["milestone"] is False
    results["methods"]["raw"]["normalised_success"] = 0.06  # raw above 0.05
    results["methods"]["internal"]["normalised_success"] = 0.9
    assert judge_gates(results, TASK)["G3"]["milestone"] is False


def test_the_label_free_deviation_can_reach_the_milestone_but_not_the_headline():
    results = passing_results()
    results["methods"]["internal"]["normalised_success"] = 0.05
    results["methods"]["raw"]["normalised_success"] = 0.02
    results["methods"]["label-free"] = {"normalised_success": 0.17}
    gates = judge_gates(results, TASK)
    assert gates["G3"]["milestone"] is True and gates["G3"]["milestone_by"] == ["label-free"]
    assert gates["G3"]["passed"] is False and gates["G3"]["label_free"] == 0.17
    results["methods"]["label-free"]["normalised_success"] = 0.09  # < 5 x 0.02
    assert judge_gates(results, TASK)["G3"]["milestone"] is False
