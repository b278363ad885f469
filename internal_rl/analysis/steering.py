"""Supervised linear controllers: can the residual stream be steered per subgoal? (paper Sec. 4, Fig. 4, App. C.3)

The controllers, one per subgoal g (U_g = f_hyp(onehot(g)) at one hook), are fitted by
`analysis/subgoal_controllers.py`; here they are rolled out and evaluated, and `steer_layers` fits and
evaluates them at each layer to find where control works best.

Evaluation is by rollout in the environment's batched env (`envs/registry.py`: the grid world or a
pinpad) with KV-cached stepping, the controller applied at every step from the first, actions sampled from
the controlled model (as the paper's base model does):

- single (one controller, one subgoal): for each subgoal g = 0..3 a quarter of the episodes get the
  subgoal's own task (grid world: colours (2g, 2g+1); pinpad: colour g) and controller U_g throughout.
  Success is that task's success: the env ends an episode on any other colour, so the agent's first
  subgoal must be g. Without control the base model picks its first subgoal from the pretraining
  distribution, so the uncontrolled rate is about 1/4 (reported as the baseline).
- chained: the controller of the current ground-truth subgoal (the subgoal of the env's current target
  colour) is applied, switching to the next one as soon as the env's progress shows it completed.
  Success is the env's task success; run on the post-training task (grid: 0-1-2-3-4-5-6-7-0-1-2-3,
  pinpad: 0-1-2-3; only transitions never seen in pretraining) and on the pretraining tasks.
- override: chained control on the two-subgoal tasks h-g whose transition h -> g no pretraining task
  contains. Once h is done the base model's habit points elsewhere, so success after h is the
  controller forcing a transition the model never saw (reported as `conditional`).

Every evaluation also rolls the env's scripted expert (the grid world's noiseless one) on the same
layouts and tasks: `expert_success` is that ceiling, since some layouts cannot be solved, and
`normalised_success` is success / expert_success. Failures are split into `wrong_colour` (the episode
ended on a colour that was not its target) and `timeout`.

`evaluate_discovered_controllers` runs the same evaluations with the metacontroller's discovered
controllers (k-means centres of its segment codes) in place of the supervised ones: the second half of
the G2 gate, whether a discovered code, held, takes the model to a subgoal as a supervised controller does.
"""

import functools
from dataclasses import asdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from internal_rl.analysis.plots import plot_layers
from internal_rl.analysis.subgoal_controllers import (
    SteeringConfig,
    controller_intervention,
    fit_subgoal_controllers,
    heldout_action_nll,
    subgoal_codes,
)
from internal_rl.common.device import module_device
from internal_rl.common.errors import ConfigError
from internal_rl.common.logging import ScalarLogger
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.registry import EnvSpec, expert_successes, make_batched_env, spec_of_config
from internal_rl.envs.tasks import SPLITS, Task, unseen_transition_tasks
from internal_rl.models.controller import ControllerDecoder
from internal_rl.models.hooks import layer_hook, validate_hook

SINGLE_DEFINITION = (
    "subgoal g's own task (grid: colours 2g, 2g+1; pinpad: colour g) with controller U_g applied from t=0; "
    "success = that task's success within the horizon (any other colour ends the episode), averaged over g = 0..3"
)
CHAINED_DEFINITION = (
    "controller of the current ground-truth subgoal (the subgoal of the env's target colour), switched when the "
    "env's progress shows it completed; success = full task success"
)
OVERRIDE_DEFINITION = (
    "chained control on each two-subgoal task h-g whose transition h -> g no pretraining task contains; "
    "success = both done, conditional = success / episodes that completed h"
)


def _colour_to_subgoal(spec: EnvSpec, n_colours: int) -> np.ndarray:
    """Lookup table colour -> subgoal index, with an extra last entry (index -1: no target) mapped to 0."""
    return np.maximum(spec.subgoal_table(n_colours), 0)


def _next_actions(
    model: torch.nn.Module, action_params: Tensor, generator: torch.Generator, greedy: bool, temperature: float = 1.0
) -> Tensor:
    """Actions for the single step of `action_params` [N,1,P]: sampled with `generator` (a categorical head's
    logits divided by `temperature`), or the most likely one (argmax of a categorical head, mean of a
    Gaussian); int64 [N] or float [N, action_dim]."""
    params = action_params[:, 0]
    if temperature != 1.0:
        if model.config.action_head != "categorical":
            raise ConfigError(f"temperature {temperature} needs a categorical action head, not "
                              f"{model.config.action_head!r}; use greedy for the Gaussian's mean")
        params = params / temperature
    if not greedy:
        return model.sample_actions(params, generator)
    if model.config.action_head == "categorical":
        return params.argmax(-1)
    return params[..., : model.config.action_dim]


@torch.no_grad()
def rollout_with_controllers(
    model: torch.nn.Module,
    env_config,
    num_envs: int,
    *,
    tasks: Sequence[Task] | None = None,
    decoder: ControllerDecoder | None = None,
    hook: str | None = None,
    seed: int = 0,
    greedy: bool = False,
    temperature: float = 1.0,
    label_of: Callable[[Any], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Roll the frozen model out in `num_envs` envs of `env_config` with KV-cached stepping until all are done.

    With a `decoder`, the controller of each env's current ground-truth subgoal (the subgoal of its target
    colour) is applied at `hook` at every step, so controllers switch exactly when a subgoal is completed;
    without one the base model acts alone. `label_of(env)`, if given, picks each env's controller instead
    (int [num_envs]; e.g. the cell of its target, for controllers fitted on place labels). `tasks` (one per env) defaults to sampling from
    `env_config.tasks`. Returns numpy arrays [num_envs]: "success", "wrong_colour" (ended on a colour
    that was not its target), "timeout" (bool), "progress" (colours completed), "steps", "last_colour"
    (the last colour entered, -1 if none: the wrong one where "wrong_colour").
    """
    if (decoder is None) != (hook is None):
        raise ConfigError("rollout_with_controllers: give both decoder and hook, or neither")
    env = make_batched_env(env_config, num_envs)
    obs = env.reset(seed=seed, tasks=tasks)
    state = model.init_state(num_envs, env_config.horizon + 1)
    device = module_device(model)
    generator = torch.Generator().manual_seed(seed)
    colour_to_subgoal = _colour_to_subgoal(spec_of_config(env_config), env_config.n_colours)
    last_visited = np.full(num_envs, -1, dtype=np.int64)
    for _ in range(env_config.horizon):
        if env.done.all():
            break
        interventions = None
        if decoder is not None:
            labels = colour_to_subgoal[env.target()] if label_of is None else label_of(env)  # target -1 -> last entry
            z = subgoal_codes(torch.from_numpy(labels).to(device), decoder.n_z)[:, None, :]  # [N,1,K] as the step's [N,1,d]
            interventions = {hook: controller_intervention(decoder, z)}
        out = model.step(torch.as_tensor(obs, dtype=torch.float32, device=device), state, interventions=interventions)
        actions = _next_actions(model, out.action_params, generator, greedy, temperature)
        obs, _, _, _, info = env.step(actions.cpu().numpy())
        last_visited = np.where(info["visited"] >= 0, info["visited"], last_visited)
    progress = np.asarray(env.progress).copy()
    success = env.success.copy()
    return {
        "success": success,
        "last_colour": last_visited,
        "wrong_colour": np.asarray(env.terminated) & ~success,
        "timeout": ~np.asarray(env.terminated),
        "progress": progress,
        "steps": np.asarray(env.t).copy(),
    }


def evaluate_controllers(
    model: torch.nn.Module,
    env_config,
    config: SteeringConfig,
    *,
    decoder: ControllerDecoder | None = None,
    hook: str | None = None,
    posttrain_task: Task | None = None,
    on_rollout: Callable[[str, Sequence[Task] | None, dict[str, np.ndarray]], None] | None = None,
    label_of: Callable[[Any], np.ndarray] | None = None,
) -> dict[str, dict]:
    """Single-subgoal, override and chained success (module docstring) with the given controllers, or of
    the base model alone when `decoder` is None, each beside the expert's success on the same layouts.
    Rollout seeds do not depend on the hook, so layers are compared on the same layouts (common random
    numbers). `posttrain_task` defaults to the env's (its task split). `on_rollout(name, tasks, rollout)`,
    if given, sees each evaluation's rollout arrays (name: single, override, posttrain, pretrain). `label_of` as
    in `rollout_with_controllers`."""
    spec = spec_of_config(env_config)
    posttrain_task = spec.posttrain_task if posttrain_task is None else posttrain_task
    K = config.n_subgoals

    def run(tasks: Sequence[Task] | None, name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        seed = derive_seed(config.seed, name)
        rollout = rollout_with_controllers(model, env_config, config.episodes if tasks is None else len(tasks),
                                           tasks=tasks, decoder=decoder, hook=hook, seed=seed, greedy=config.greedy,
                                           temperature=config.temperature, label_of=label_of)
        if on_rollout is not None:
            on_rollout(name, tasks, rollout)
        return rollout, _expert_ceiling(env_config, len(rollout["success"]), seed,
                                        None if tasks is None else tuple(map(tuple, tasks)))

    per_goal = config.episodes // K
    single, single_expert = run([spec.subgoal_tasks[g] for g in range(K) for _ in range(per_goal)], "single")
    per_subgoal = single["success"].reshape(K, per_goal).mean(1)
    unseen = unseen_transition_tasks(SPLITS[spec.split], spec.subgoal_tasks)
    per_task = max(1, config.episodes // len(unseen))
    override, override_expert = run([task for task in unseen for _ in range(per_task)], "override")
    first = override["progress"] >= spec.colours_per_subgoal
    post, post_expert = run([posttrain_task] * config.episodes, "posttrain")
    pre, pre_expert = run(None, "pretrain")
    override_summary = _rollout_summary(override, override_expert, spec.colours_per_subgoal)
    override_summary["first"] = float(first.mean())
    override_summary["conditional"] = float(override["success"].sum() / max(first.sum(), 1))
    override_summary["tasks"] = ["-".join(map(str, task)) for task in unseen]
    return {
        "single": {**_rollout_summary(single, single_expert, spec.colours_per_subgoal),
                   "per_subgoal": [float(v) for v in per_subgoal]},
        "override": override_summary,
        "chained_posttrain": _rollout_summary(post, post_expert, spec.colours_per_subgoal),
        "chained_pretrain": _rollout_summary(pre, pre_expert, spec.colours_per_subgoal),
    }


class CodeTable(torch.nn.Module):
    """A controller decoder over K fixed codes: one-hot k [..., K] -> `decoder`(codes[k]); an all-zero input
    gives `decoder`(0). Lets a metacontroller's codes stand where the supervised controllers' one-hots do."""

    def __init__(self, decoder: torch.nn.Module, codes: Tensor):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("codes", torch.as_tensor(codes, dtype=torch.float32))
        self.n_z = int(self.codes.shape[0])

    def forward(self, onehot: Tensor):
        return self.decoder(onehot @ self.codes)


def evaluate_discovered_controllers(
    model: torch.nn.Module,
    env_config,
    config: SteeringConfig,
    *,
    decoder: torch.nn.Module,
    hook: str,
    codes: Sequence[Sequence[float]],
    controller_of_subgoal: Sequence[int],
    posttrain_task: Task | None = None,
) -> dict[str, dict]:
    """`evaluate_controllers` (same seeds, hence the same layouts as the supervised controllers under the same
    `config`) with the discovered controller `codes[controller_of_subgoal[g]]` of the metacontroller's
    `decoder` standing for subgoal g; a subgoal no controller stands for (-1) gets the code 0."""
    spec = spec_of_config(env_config)
    colour_to_subgoal = _colour_to_subgoal(spec, env_config.n_colours)
    lookup = np.asarray(controller_of_subgoal, dtype=np.int64)
    if len(lookup) < config.n_subgoals:  # subgoals no segment showed
        lookup = np.concatenate([lookup, np.full(config.n_subgoals - len(lookup), -1, dtype=np.int64)])
    table = CodeTable(decoder, torch.as_tensor(np.asarray(codes, dtype=np.float32)))
    return evaluate_controllers(model, env_config, config, decoder=table, hook=hook, posttrain_task=posttrain_task,
                                label_of=lambda env: lookup[colour_to_subgoal[env.target()]])


@functools.lru_cache(maxsize=16)
def _expert_ceiling(env_config, num_envs: int, seed: int, tasks: tuple[Task, ...] | None) -> np.ndarray:
    """`expert_successes`, kept: every layer (and the uncontrolled baseline) is evaluated on the same seeds,
    hence the same layouts, so the expert is rolled out once per evaluation, not once per layer."""
    successes = expert_successes(env_config, num_envs, seed, tasks)
    successes.flags.writeable = False
    return successes


def _rollout_summary(
    rollout: Mapping[str, np.ndarray], expert_success: np.ndarray, colours_per_subgoal: int
) -> dict[str, float]:
    success, expert = float(rollout["success"].mean()), float(expert_success.mean())
    return {
        "success": success,
        "expert_success": expert,
        "normalised_success": success / expert if expert > 0 else float("nan"),
        "wrong_colour": float(rollout["wrong_colour"].mean()),
        "timeout": float(rollout["timeout"].mean()),
        "mean_subgoals_completed": float((rollout["progress"] // colours_per_subgoal).mean()),
        "mean_steps": float(rollout["steps"].mean()),
    }


def hook_layer(hook: str, n_layers: int) -> int | None:
    """The paper's residual layer index of `hook` (inverse of `layer_hook`), or None for a mid-block hook."""
    for layer in range(n_layers + 1):
        if layer_hook(layer, n_layers) == hook:
            return layer
    return None


def resolve_layers(specs: Sequence[str | int] | None, n_layers: int) -> list[str]:
    """Hook names from a mix of paper layer indices (1..L-1 style integers) and hook names.

    Default (None or empty): every residual layer strictly inside the trunk, 1..L-1 (block outputs).
    """
    if not specs:
        return [layer_hook(layer, n_layers) for layer in range(1, n_layers)]
    hooks = []
    for spec in specs:
        text = str(spec)
        if text.lstrip("-").isdigit():
            hooks.append(layer_hook(int(text), n_layers))
        else:
            hooks.append(validate_hook(text, n_layers))
    return list(dict.fromkeys(hooks))


def steer_layers(
    model: torch.nn.Module,
    dataset,
    env_config,
    hooks: Sequence[str],
    config: SteeringConfig = SteeringConfig(),
    *,
    show_progress: bool = True,
    logger: ScalarLogger | None = None,
    on_decoder: Callable[[str, ControllerDecoder], None] | None = None,
    posttrain_task: Task | None = None,
) -> dict:
    """Fit and evaluate supervised subgoal controllers at each hook in `hooks`; JSON-ready results
    (`on_decoder(hook, decoder)`, if given, receives each fitted decoder, e.g. to save it; the chained
    evaluation runs on `posttrain_task`, by default the env's post-training task):

    - "baseline": the base model without control (same evaluations, and its held-out action NLL);
    - "layers": [{"hook", "layer" (paper index or None), "fit": NLLs, "single", "chained_posttrain",
      "chained_pretrain"}] in the order of `hooks`;
    - "best_layer", "best_hook": the most controllable point (chained success on `posttrain_task`, ties
      broken by single-subgoal success, pretraining-task success, then held-out action NLL);
    - "best_single", "best_chained_posttrain", "best_chained_pretrain": {"hook", "layer", "success"};
    - "posttrain_task", "definitions", "n_layers", "config".
    """
    n_layers = int(model.n_layers)
    hooks = [validate_hook(h, n_layers) for h in hooks]
    if not hooks:
        raise ConfigError("steer_layers: no hooks given; e.g. --layers 1 2 3")
    posttrain_task = spec_of_config(env_config).posttrain_task if posttrain_task is None else tuple(posttrain_task)
    baseline = evaluate_controllers(model, env_config, config, posttrain_task=posttrain_task)
    held_out = dataset.split(config.holdout_fraction, config.seed)[1]  # the split fit_subgoal_controllers uses
    baseline["fit"] = {"heldout_nll": heldout_action_nll(model, held_out, config)}
    rows = []
    for hook in hooks:
        decoder, fit = fit_subgoal_controllers(model, dataset, hook, config, show_progress=show_progress, logger=logger)
        if on_decoder is not None:
            on_decoder(hook, decoder)
        evaluation = evaluate_controllers(model, env_config, config, decoder=decoder, hook=hook,
                                          posttrain_task=posttrain_task)
        rows.append({"hook": hook, "layer": hook_layer(hook, n_layers), "fit": fit, **evaluation})

    def best(key: str) -> dict:
        row = max(rows, key=lambda r: r[key]["success"])
        return {"hook": row["hook"], "layer": row["layer"], "success": row[key]["success"]}

    # The paper's controllability measure is the post-training task (here `posttrain_task`); ties (e.g. all
    # zero) are broken by single-subgoal success, then pretraining-task success, then the held-out action NLL.
    overall = max(rows, key=lambda r: (r["chained_posttrain"]["success"], r["single"]["success"],
                                       r["chained_pretrain"]["success"], -r["fit"]["heldout_nll_controlled"]))
    return {
        "baseline": baseline,
        "layers": rows,
        "best_layer": overall["layer"],
        "best_hook": overall["hook"],
        "best_single": best("single"),
        "best_chained_posttrain": best("chained_posttrain"),
        "best_chained_pretrain": best("chained_pretrain"),
        "posttrain_task": list(posttrain_task),
        "definitions": {"single": SINGLE_DEFINITION, "override": OVERRIDE_DEFINITION, "chained": CHAINED_DEFINITION},
        "n_layers": n_layers,
        "config": asdict(config),
    }


def plot_steering_results(results: Mapping, path, probes: Mapping | None = None) -> None:
    """Draw steering.png: success vs residual layer for single and chained control (uncontrolled baselines
    as reference lines), with the probe accuracy per layer overlaid when `probes` results are given."""
    rows = [r for r in results["layers"] if r["layer"] is not None]
    series = {
        "single subgoal": {r["layer"]: r["single"]["success"] for r in rows},
        "chained, post-training task": {r["layer"]: r["chained_posttrain"]["success"] for r in rows},
        "chained, pretraining tasks": {r["layer"]: r["chained_pretrain"]["success"] for r in rows},
    }
    base = results["baseline"]
    baselines = {
        "single subgoal": base["single"]["success"],
        "chained, post-training task": base["chained_posttrain"]["success"],
        "chained, pretraining tasks": base["chained_pretrain"]["success"],
    }
    if probes is not None:
        series["probe accuracy (read)"] = {r["layer"]: r["accuracy"] for r in probes["layers"]}
    n_layers = results.get("n_layers")
    plot_layers(
        series,
        path,
        ylabel="success rate / probe accuracy",
        title="Supervised subgoal controllers e + U_g e, by layer",
        baselines=baselines,
        dashed=("probe accuracy (read)",),
        highlight=n_layers // 2 if n_layers else None,
        ylim=(0.0, 1.02),
    )
