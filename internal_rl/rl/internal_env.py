"""The internal-RL environment: task env + frozen base model + frozen switching unit + frozen decoder.

Paper Sec. "Internal reinforcement learning" and Algorithm 1: the agent acts in the residual stream.
Its observation is the activation e at the controlled hook (layer L/2) at a decision time, its action a
latent code z in R^{n_z}. One abstract step, given z:

    U = f_hyp(z)                                                controller decoder (frozen)
    repeat
        a_t ~ p_theta(a | upper blocks(e_t + U e_t))            the base model samples (KV-cached step)
        o_{t+1}, r_t = env.step(a_t)
        e_{t+1} = lower blocks(o_{1..t+1})
        beta_{t+1}, h_switch = f_switch(e_{t+1}, h_switch, z)   switching unit + history GRU (frozen)
    until beta_{t+1} >= 0.5 (the Heaviside switch of App. C.6) or the episode ends
    return e_{t+1}, sum_t r_t, done

How it is computed. One base-model step per low-level step does all of it: the intervention at the
controlled hook receives e_t (the lower blocks' output for o_t), runs the switching unit on it, asks for a
new code where beta_t >= 0.5 (and always at t = 1, where z_0 = 0 means nothing: Algorithm 3 queries the
policy at episode start), and returns e_t + U(z_t) e_t to the upper blocks, which give the action
distribution. Nothing is committed (switch state, code, action) until the step has finished. Episodes
that have ended are dropped from the base model's batch once half of it has ended (`drop_finished`).

Two interfaces:
- `BatchedInternalEnv.step(decide)`: one low-level step of N episodes in lockstep; `decide(e [K,d], env_ids
  [K]) -> z [K,n_z]` is called, from inside the step, for the K episodes whose switch fired. This is the
  fast path: rollouts (`rl/rollouts.py`) put the policy in `decide`, so an abstract decision costs nothing
  extra.
- `InternalEnv`: the Gymnasium environment of the paper's MDP (one episode, `step(z)` = one abstract step),
  built on the batched one. When its switch fires it must hand e back before the step can be finished; it
  does so by aborting the base-model step from inside `decide` and redoing that step when the next z
  arrives (a step that raised advanced neither the decoding position nor any state: the transformer
  overwrites the partially written cache slot on the redo, and a Hawk pass never writes into its old
  state). It checks the contract; the batched path is the one used for training.
"""

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from internal_rl.common.device import module_device
from internal_rl.common.errors import ConfigError, check
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.registry import make_batched_env, spec_of_config
from internal_rl.envs.tasks import Task
from internal_rl.models.base_model import BaseModel, DecodingState
from internal_rl.models.controller import ControllerParams, apply_controller
from internal_rl.models.hooks import controlled_hook, validate_hook
from internal_rl.metacontroller.segmenter import Segmenter

# decide(e [K, d_model], env_ids [K]) -> z [K, n_z]: the codes for the K episodes whose switch fired.
Decide = Callable[[Tensor, Tensor], Tensor]

BETA_THRESHOLD = 0.5  # paper App. C.6: "beta thresholded at 0.5, as we do in internal RL"
# Where a new code is asked for: where the switching unit fires (the method), or where the task env's
# current subgoal changes (a diagnostic that reads the env's subgoal labels, so that RL over codes can be
# measured apart from the switching unit).
SWITCHES = ("learned", "subgoal")


@dataclass
class LowLevelStep:
    """What one low-level step of `BatchedInternalEnv` did, per episode ([N] each)."""

    reward: Tensor  # f32, 0 for episodes that were already done
    active: Tensor  # bool, the episode was running before this step (it took an action)
    decided: Tensor  # bool, a new code was chosen at this step (the switch fired, or t = 1)
    beta: Tensor  # f32, the switching unit's output at this step (0 for finished episodes)
    e: Tensor  # [N, d_model], the activation at the controlled hook for o_t, before control (0 if finished)
    terminated: Tensor  # bool, after this step
    truncated: Tensor  # bool, after this step


def resolve_hook(base_model: BaseModel, metacontroller: Segmenter) -> str:
    """The hook the metacontroller was trained on (its config), or the paper's layer L/2 if unset."""
    hook = metacontroller.config.hook or controlled_hook(base_model.n_layers)
    return validate_hook(hook, base_model.n_layers)


def select_sequences(state: DecodingState, rows: Tensor) -> DecodingState:
    """The decoding state of the sequences `rows` only (a copy), for any trunk (its state's `select`).

    Episodes end at different times; dropping the finished ones from the base model's batch saves most
    of the compute of a lockstep rollout, whose length is that of its longest episode.
    """
    return DecodingState(state.trunk_state.select(rows), state.position, state.max_len, len(rows))


def drop_finished(state: DecodingState, rows: Tensor, done: Tensor) -> tuple[DecodingState, Tensor]:
    """Drop finished episodes from a decoding state holding episodes `rows` once at least half are done.

    Returns the (possibly) smaller state and the episode ids its sequences belong to.
    """
    live = ~done[rows]
    if 2 * int(live.sum()) > len(rows) or not bool(live.any()):
        return state, rows
    return select_sequences(state, live.nonzero()[:, 0]), rows[live]


def _expand(params: ControllerParams) -> ControllerParams:
    """Controllers of batch shape [N] -> [N, 1], the shape of a single-step activation [N, 1, d]."""
    return ControllerParams(*(None if x is None else x[:, None] for x in (params.a, params.b, params.shift)))


class BatchedInternalEnv:
    """N internal-RL episodes stepped in lockstep, one low-level step at a time (see the module docstring).

    The base model and the metacontroller are used frozen and under `torch.no_grad()`. Episodes that have
    finished stay frozen (the env ignores their actions) until the next `reset`. `env_config` is any
    registered environment's config (`envs/registry.py`); its batched env is `self.env`. The tensors this
    env returns are on the base model's device (`self.device`), where the metacontroller must be too.
    `switch` (SWITCHES) says where a code ends: "subgoal" ignores the switching unit's beta (still reported)
    and asks for a new code exactly where the subgoal of the env's next colour changes.
    """

    def __init__(
        self,
        base_model: BaseModel,
        metacontroller: Segmenter,
        env_config: Any,
        num_envs: int,
        beta_threshold: float = BETA_THRESHOLD,
        switch: str = "learned",
    ):
        check(switch in SWITCHES, f"unknown switch {switch!r}; valid: {', '.join(SWITCHES)}")
        check(
            metacontroller.config.d_model == base_model.d_model,
            f"metacontroller d_model={metacontroller.config.d_model} does not match the base model's {base_model.d_model}",
        )
        check(
            env_config.obs_dim == base_model.config.obs_dim,
            f"environment obs_dim={env_config.obs_dim} does not match the base model's {base_model.config.obs_dim}",
        )
        check(0.0 < beta_threshold <= 1.0, f"beta_threshold={beta_threshold}; expected in (0, 1]")
        self.device = module_device(base_model)
        check(
            module_device(metacontroller) == self.device,
            f"the metacontroller is on {module_device(metacontroller)}, the base model on {self.device}",
        )
        self.base_model = base_model
        self.metacontroller = metacontroller
        self.hook = resolve_hook(base_model, metacontroller)
        self.env = make_batched_env(env_config, num_envs)
        self.num_envs = num_envs
        self.horizon = env_config.horizon
        self.d_model = base_model.d_model
        self.n_z = metacontroller.config.n_z
        self.beta_threshold = beta_threshold
        self.switch = switch
        self._subgoal_table = torch.from_numpy(spec_of_config(env_config).subgoal_table(env_config.n_colours))
        self.generator = torch.Generator()  # the base model's action sampling
        self._started = False

    def reset(self, seed: int, tasks: list[Task] | None = None, layout_seed: int | None = None) -> None:
        """Start N new episodes: layouts from `seed`, one task per episode (default: the config's tasks).

        `layout_seed`, if given, is passed to the task env's own reset instead, to replay the layouts of
        another rollout of the same env (e.g. the expert's, `analysis/code_replay.py`)."""
        self.env.reset(seed=derive_seed(seed, "layouts") if layout_seed is None else layout_seed, tasks=tasks)
        self.generator.manual_seed(derive_seed(seed, "base-model-actions"))
        n = self.num_envs
        self.decoding_state = self.base_model.init_state(n, self.horizon)
        self.rows = torch.arange(n, device=self.device)  # the episodes in the model's batch (finished ones get dropped)
        self.switch_state = self.metacontroller.init_switch_state(n)  # history GRU state h, [N, n_h]
        self.z = torch.zeros(n, self.n_z, device=self.device)  # z_0 = 0
        if self.switch == "subgoal":
            self.subgoal = self.current_subgoals()  # the subgoal each episode's code was chosen for
        self.t = 0
        self._started = True

    @property
    def done(self) -> Tensor:
        """bool [N]: the episode has ended (terminated or truncated)."""
        return torch.from_numpy(self.env.done.copy()).to(self.device)

    @property
    def successes(self) -> Tensor:
        """bool [N]: the episode ended by completing its task."""
        return torch.from_numpy(self.env.success.copy()).to(self.device)

    def current_subgoals(self) -> Tensor:
        """int64 [N]: the subgoal of each episode's next colour (-1 once it has ended)."""
        return self._subgoal_table[torch.from_numpy(self.env.target())].to(self.device)

    @torch.no_grad()
    def step(self, decide: Decide) -> LowLevelStep:
        """Advance every running episode by one low-level step, calling `decide` where the switch fires."""
        if not self._started:
            raise ConfigError("BatchedInternalEnv.step called before reset")
        active = ~self.done
        self.decoding_state, rows = drop_finished(self.decoding_state, self.rows, ~active)
        self.rows = rows
        running = active[rows]  # [R], for the R episodes in the base model's batch
        first_step = self.t == 0
        obs = torch.from_numpy(self.env.observations()).to(self.device)[rows]
        z_prev = self.z[rows]
        if self.switch == "subgoal":
            subgoal_now = self.current_subgoals()
            new_subgoal = (subgoal_now != self.subgoal)[rows]
        decisions: dict[str, Tensor] = {}

        def control(e: Tensor) -> Tensor:  # e [R, 1, d] at the controlled hook, before control
            e_t = e[:, 0]
            beta, switch_state = self.metacontroller.switch_step(e_t, self.switch_state[rows], z_prev)
            ends = new_subgoal if self.switch == "subgoal" else beta >= self.beta_threshold
            fire = running & (ends | first_step)
            z = z_prev
            if bool(fire.any()):
                index = fire.nonzero()[:, 0]
                z = z.index_put((index,), decide(e_t[index], rows[index]).to(z.dtype))
            decisions.update(e=e_t, beta=beta, switch_state=switch_state, fire=fire, z=z)
            return apply_controller(e, _expand(self.metacontroller.decode(z)))

        out = self.base_model.step(obs, self.decoding_state, interventions={self.hook: control})
        actions = self.base_model.placeholder_actions(self.num_envs)  # finished episodes ignore their action
        actions[rows] = self.base_model.sample_actions(out.action_params[:, 0], self.generator)
        _, reward, terminated, truncated, _ = self.env.step(actions.cpu().numpy())

        # Commit: only running episodes advance their switch state (finished ones are frozen).
        self.switch_state[rows] = torch.where(running[:, None], decisions["switch_state"], self.switch_state[rows])
        self.z[rows] = decisions["z"]
        if self.switch == "subgoal":
            self.subgoal[rows] = torch.where(running, subgoal_now[rows], self.subgoal[rows])
        self.t += 1
        n, device = self.num_envs, self.device
        return LowLevelStep(
            reward=torch.from_numpy(reward).to(device),
            active=active,
            decided=torch.zeros(n, dtype=torch.bool, device=device).index_put((rows,), decisions["fire"]),
            beta=torch.zeros(n, device=device).index_put((rows,), decisions["beta"]),
            e=torch.zeros(n, self.d_model, device=device).index_put((rows,), decisions["e"]),
            terminated=torch.from_numpy(terminated).to(device),
            truncated=torch.from_numpy(truncated).to(device),
        )


class _AwaitDecision(Exception):
    """Raised inside a base-model step when the switch fired and no code has been given yet."""

    def __init__(self, e: Tensor):
        super().__init__("the switch fired: a new code is needed")
        self.e = e


class InternalEnv(gymnasium.Env):
    """The paper's internal-RL MDP for one episode, as a Gymnasium environment.

    Observation: e at the controlled hook at a decision time (float32 [d_model]). Action: a code z
    (float32 [n_z], unbounded: the policy is Gaussian). `step(z)` applies U(z) until the switch fires or
    the episode ends and returns the summed reward; info["low_level_steps"] counts the base model's actions.
    When the episode has ended, the observation is e at its last low-level step (never acted on).
    reset options: {"task": tuple of colours}; default: the task given to the constructor, else a
    pretraining task of `env_config`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        base_model: BaseModel,
        metacontroller: Segmenter,
        env_config: Any = None,
        task: Task | None = None,
        beta_threshold: float = BETA_THRESHOLD,
    ):
        env_config = GridWorldConfig() if env_config is None else env_config
        self._core = BatchedInternalEnv(base_model, metacontroller, env_config, 1, beta_threshold)
        self.task = None if task is None else tuple(task)
        d, n_z = self._core.d_model, self._core.n_z
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(d,), dtype=np.float32)
        self.action_space = spaces.Box(-np.inf, np.inf, shape=(n_z,), dtype=np.float32)
        self._pending_z: Tensor | None = None
        self._last_e = torch.zeros(d, device=self._core.device)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self.task)
        self._core.reset(int(self.np_random.integers(2**62)), tasks=None if task is None else [tuple(task)])
        self._pending_z = None
        e, _, _ = self._run_until_decision()  # the switch always fires at t = 1: no low-level step is taken
        return e, self._info(0, 0.0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if bool(self._core.done[0]):
            raise ConfigError("InternalEnv.step called after the episode ended; call reset")
        z = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self._core.device).reshape(1, self._core.n_z)
        self._pending_z = z
        e, reward, low_level_steps = self._run_until_decision()
        terminated = bool(self._core.env.terminated[0])
        truncated = bool(self._core.env.truncated[0])
        return e, reward, terminated, truncated, self._info(low_level_steps, reward)

    def _run_until_decision(self) -> tuple[np.ndarray, float, int]:
        """Take low-level steps until the switch asks for a code that was not given, or the episode ends."""
        reward, low_level_steps = 0.0, 0
        while not bool(self._core.done[0]):
            try:
                result = self._core.step(self._decide)
            except _AwaitDecision as wait:
                return wait.e.cpu().numpy().astype(np.float32), reward, low_level_steps
            reward += float(result.reward[0])
            low_level_steps += 1
            self._last_e = result.e[0]
        return self._last_e.cpu().numpy().astype(np.float32), reward, low_level_steps

    def _decide(self, e: Tensor, env_ids: Tensor) -> Tensor:
        if self._pending_z is None:
            raise _AwaitDecision(e[0].clone())
        z, self._pending_z = self._pending_z, None
        return z

    def _info(self, low_level_steps: int, reward: float) -> dict[str, Any]:
        env = self._core.env
        return {
            "low_level_steps": low_level_steps,
            "progress": int(env.progress[0]),
            "task": tuple(int(c) for c in env.tasks[0, : env.task_lengths[0]]),
            "success": bool(env.success[0]),
        }
