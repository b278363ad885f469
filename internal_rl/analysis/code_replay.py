"""Can the metacontroller's codes steer the base model through a task? A ceiling check for internal RL.

Internal RL searches the code space for codes that solve a task; this measures how good the best-informed
codes in that space are, before any RL is run. The expert solves the task on N layouts; the
metacontroller's non-causal encoder reads each demonstration and gives its codes (z_t, with z~ = mu, at the
steps where its switch fires); the internal-RL environment then replays those codes in order, one per
decision, on the same layouts, with the base model sampling its own actions. Codes drawn from the prior
N(0, I), where internal RL's policy starts, are the reference.

Two policies that internal RL's policy could learn show where between those two it can land:
- `mean_code`: each decision's mean demonstration code (the k-th decision gets the mean of the k-th codes),
  the same on every layout: what a policy that ignores its observation can do. If the codes named
  subgoals, this would be as good as the demonstrations.
- `residual_linear`: the code predicted from the residual activation e at the decision by a ridge
  regression, fitted on demonstrations of other layouts (one map for the first decision, one for later
  ones): a policy that reads e, as internal RL's does, with a linear read-out.

The replayed codes do not adapt when the base model drifts from the demonstration, or when the switch
fires at other steps than in it, so a policy could do better; but a replay that barely beats the prior
says the codes do not carry what the task needs, whatever RL does with them. Grid world only: it needs an
expert that rolls out on layouts the internal-RL environment can reproduce (`data.generate.rollout_chunk`).
"""

from typing import Any, Callable

import numpy as np
import torch
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits
from torch import Tensor

from internal_rl.analysis.switching import predicted_switches
from internal_rl.common.errors import ConfigError, check
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import rollout_chunk
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import Task, with_tasks
from internal_rl.metacontroller.training import controlled_forward
from internal_rl.rl.internal_env import BatchedInternalEnv


@torch.no_grad()
def demonstration_codes(base: torch.nn.Module, metacontroller: torch.nn.Module, demos: Any) -> list[tuple[Tensor, Tensor]]:
    """Per demonstration, the codes z [K_i, n_z] at the steps where the switch fires (step 0 always), and
    the residual activations e [K_i, d_model] at the controlled hook at those steps (what an internal-RL
    policy observes there)."""
    batch = demos.batch(np.arange(demos.num_episodes))
    _, out = controlled_forward(base, metacontroller, batch, sample=False)
    lengths = batch["mask"].sum(1).tolist()
    result = []
    for i, length in enumerate(lengths):
        fires = torch.from_numpy(np.union1d([0], predicted_switches(out["beta"][i, :length].numpy())))
        result.append((out["z"][i, fires], out["e"][i, fires]))
    return result


def fit_linear_policy(demos: list[tuple[Tensor, Tensor]]) -> list[Any]:
    """Ridge regressions e -> z fitted on demonstration decisions: [first decisions, later decisions]
    (the first map serves later decisions too when no demonstration has any)."""
    check(len(demos) > 0, "code replay: no demonstrations to fit the linear policy on")

    def fit(pairs: list[tuple[Tensor, Tensor]]) -> Any:
        codes, residuals = (torch.stack(x).numpy() for x in zip(*pairs))
        with threadpool_limits(1):
            return Ridge(alpha=10.0).fit(residuals, codes)

    first = fit([(z[0], e[0]) for z, e in demos])
    later = [(z[k], e[k]) for z, e in demos for k in range(1, len(z))]
    return [first, fit(later) if later else first]


def clone_demonstration_codes(policy: torch.nn.Module, demos: list[tuple[Tensor, Tensor]], *, steps: int = 500,
                              batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Fit internal RL's code policy (`rl.policies.CodePolicy`) to demonstrations by maximum likelihood:
    each demonstration's residuals e_1..e_K (from `demonstration_codes`) in, its codes z_1..z_K out.

    A warm start for internal RL (`train_rl(init_policy=...)`), to tell apart a code space that RL cannot
    improve from one whose good codes RL does not find from the prior, where the paper starts it.
    Returns the loss, -log pi(z | e) per decision, at every step.
    """
    check(len(demos) > 0 and steps >= 1, f"cloning needs demonstrations and steps >= 1, got {len(demos)} and {steps}")
    longest = max(len(z) for z, _ in demos)
    codes = torch.zeros(len(demos), longest, demos[0][0].shape[1])
    residuals = torch.zeros(len(demos), longest, demos[0][1].shape[1])
    mask = torch.zeros(len(demos), longest, dtype=torch.bool)
    for i, (z, e) in enumerate(demos):
        codes[i, : len(z)], residuals[i, : len(z)], mask[i, : len(z)] = z, e, True
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(demos), (batch_size,), generator=generator)
        loss = -policy.log_prob(residuals[index], codes[index], mask[index]).sum() / mask[index].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def replay_codes(base: torch.nn.Module, metacontroller: torch.nn.Module, task: Task, *, episodes: int = 256,
                 seed: int = 0, env_config: GridWorldConfig | None = None, noiseless: bool = False,
                 fit_episodes: int = 2048) -> dict[str, Any]:
    """Success on `task` with codes inferred from expert demonstrations, with the two reference policies
    of the module docstring, and with codes from the prior.

    `noiseless`: the demonstrations come from the noiseless expert (for a metacontroller trained on D*).
    `fit_episodes`: demonstrations (on other layouts) the linear policy is fitted on."""
    check(isinstance(episodes, int) and episodes >= 1, f"code replay: episodes={episodes!r}; expected an int >= 1")
    config = with_tasks(GridWorldConfig() if env_config is None else env_config, [task])
    layout_seed = derive_seed(seed, "reset")  # the layouts rollout_chunk(config, episodes, seed) draws
    arrays, solved = rollout_chunk(config, episodes, seed, 0.0, noiseless)
    solvable = np.flatnonzero(solved)
    if solvable.size == 0:
        raise ConfigError(f"code replay: the expert solved none of {episodes} layouts of task {task}")
    demos = demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(arrays))
    codes = {i: z for i, (z, _) in zip(solvable.tolist(), demos)}
    # The linear policy learns from demonstrations on other layouts than the ones it is replayed on.
    fit_arrays, _ = rollout_chunk(config, fit_episodes, derive_seed(seed, "fit-layouts"), 0.0, noiseless)
    maps = fit_linear_policy(demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(fit_arrays)))
    most = max(len(z) for z in codes.values())
    mean_codes = [torch.stack([z[min(k, len(z) - 1)] for z in codes.values()]).mean(0) for k in range(most)]
    n_z = metacontroller.config.n_z
    generator = torch.Generator().manual_seed(derive_seed(seed, "prior-codes"))

    def demonstration(env_id: int, k: int, e: Tensor) -> Tensor:
        demo = codes.get(env_id)
        return torch.zeros(n_z) if demo is None else demo[min(k, len(demo) - 1)]

    def mean_code(env_id: int, k: int, e: Tensor) -> Tensor:
        return mean_codes[min(k, most - 1)]

    def residual_linear(env_id: int, k: int, e: Tensor) -> Tensor:
        return torch.from_numpy(maps[min(k, 1)].predict(e[None].numpy())[0]).float()

    def prior(env_id: int, k: int, e: Tensor) -> Tensor:
        return torch.randn(n_z, generator=generator)

    def run(pick: Callable[[int, int, Tensor], Tensor]) -> dict[str, float]:
        env = BatchedInternalEnv(base, metacontroller, config, episodes)
        env.reset(seed, tasks=[task] * episodes, layout_seed=layout_seed)
        decisions = torch.zeros(episodes, dtype=torch.long)

        def decide(e: Tensor, env_ids: Tensor) -> Tensor:
            z = torch.stack([pick(i, int(decisions[i]), e[j]) for j, i in enumerate(env_ids.tolist())])
            decisions[env_ids] += 1
            return z

        while not bool(env.done.all()):
            env.step(decide)
        return {
            "success": float(env.successes.numpy()[solvable].mean()),
            "colours_reached": float(env.env.progress[solvable].mean()),
            "decisions_per_episode": float(decisions[solvable].float().mean()),
        }

    return {
        "task": list(task),
        "layouts": episodes,
        "noiseless_demonstrations": bool(noiseless),
        "solvable_layouts": int(solvable.size),
        "demonstration_codes_per_episode": float(np.mean([len(c) for c in codes.values()])),
        "demonstration": run(demonstration),
        "residual_linear": run(residual_linear),
        "mean_code": run(mean_code),
        "prior": run(prior),
    }
