"""RL rollouts on Ray actors, learning in the driver (paper Algorithm 3, collected in parallel).

Each actor holds its own copy of the frozen base model (and, for internal RL, the frozen metacontroller:
switching unit and controller decoder) and the method's policy network, built by the same
`rl.training.method_setup` the local path uses; it runs the same rollout function
(`collect_internal_rollouts` or `collect_raw_rollouts`). For each batch the learner sends its current
policy weights once (`ray.put`), every actor collects a share of the B episodes, and the shares are
concatenated and learned from centrally with the same PPO update.

Seeds: share k of the batch with seed s gets layouts and sampling from `derive_seed(s, "shard", k)`, so a
run is reproducible for a given seed and number of workers (a different worker count gives other, equally
distributed, episodes). Actors are stateless between calls apart from the frozen models, so an actor whose
process dies is restarted by Ray (`max_restarts`) and the lost call re-run (`max_task_retries`) with the
same inputs, giving the same episodes.
"""

import os
from typing import Any

import torch

from internal_rl.common.seeding import derive_seed
from internal_rl.distributed import check_workers, cluster_cpus, get, require_ray
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.metacontroller.modules import Metacontroller
from internal_rl.models.base_model import BaseModel
from internal_rl.rl.ppo import RolloutBatch
from internal_rl.rl.rollouts import Collect
from internal_rl.rl.training import RLConfig, method_setup

MAX_RESTARTS = 3  # an actor is restarted at most this often (per actor)
MAX_TASK_RETRIES = 3  # a rollout call lost with its actor is re-run at most this often


class RolloutActor:
    """One rollout worker: the frozen models and a policy network whose weights arrive with each call."""

    def __init__(self, method: str, base_model: BaseModel, metacontroller: Metacontroller | None,
                 env_config: GridWorldConfig, config: RLConfig):
        torch.set_num_threads(1)  # one CPU per actor; the actors are the parallelism
        self.generator = torch.Generator()
        self.policy, self.collect_episodes = method_setup(method, base_model, metacontroller, env_config, config,
                                                          self.generator)

    def collect(self, weights: dict[str, torch.Tensor], seed: int, num_envs: int) -> RolloutBatch:
        """`num_envs` episodes with the policy `weights`; layouts and sampling from `seed` alone."""
        self.policy.load_state_dict(weights)
        self.generator.manual_seed(derive_seed(seed, "sampling"))
        return self.collect_episodes(seed, num_envs)

    def pid(self) -> int:
        return os.getpid()


def shard_sizes(num_envs: int, num_workers: int) -> list[int]:
    """`num_envs` split as evenly as possible over at most `num_workers` non-empty shares."""
    shares = min(num_envs, num_workers)
    return [num_envs // shares + (k < num_envs % shares) for k in range(shares)]


class RayRolloutWorkers:
    """`rl.training.RolloutWorkers` on Ray actors: `num_workers` of them (default: one per CPU of the cluster).

    Ray must be initialised (`internal_rl.distributed.init_ray`). Pass it to `train_rl`/`run_rl`/
    `run_rl_seeds` as `workers=`; each `bind` (one per training run) starts fresh actors.
    """

    def __init__(self, num_workers: int | None = None):
        self.num_workers = check_workers(num_workers)
        self.actors: list[Any] = []
        self._models: list[Any] = []

    def bind(self, method: str, base_model: BaseModel, metacontroller: Metacontroller | None,
             env_config: GridWorldConfig, config: RLConfig, policy: torch.nn.Module) -> Collect:
        ray = require_ray()
        actor_class = ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(RolloutActor)
        self.shutdown()
        # The models go to the object store once, not once per actor; the references are kept as long as
        # the actors, since a restarted actor is rebuilt from them.
        self._models = [ray.put(x) for x in (base_model, metacontroller, env_config, config)]
        self.actors = [actor_class.remote(method, *self._models) for _ in range(self.num_workers or cluster_cpus())]

        def collect(seed: int, num_envs: int) -> RolloutBatch:
            weights = ray.put({name: value.detach().cpu() for name, value in policy.state_dict().items()})
            sizes = shard_sizes(num_envs, len(self.actors))
            refs = [actor.collect.remote(weights, derive_seed(seed, "shard", k), size)
                    for k, (actor, size) in enumerate(zip(self.actors, sizes))]
            return RolloutBatch.concatenate(get(refs))

        return collect

    def pids(self) -> list[int]:
        """The process id of each actor (changes when Ray restarts one)."""
        return get([actor.pid.remote() for actor in self.actors])

    def shutdown(self) -> None:
        """Stop the actors (they also stop when this object is dropped)."""
        ray = require_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._models = [], []
