"""RLlib's PPO trains on `InternalEnv` as it is: the environment contract is plain Gymnasium.

    pip install 'internal-rl[rllib]'
    OMP_NUM_THREADS=1 python examples/rllib_internal_env.py --run runs/demo --iterations 5
    OMP_NUM_THREADS=1 python examples/rllib_internal_env.py            # random tiny models, a smoke run

With `--run`, the env runners load the run's frozen base model and metacontroller and act on the paper's
post-training task (or `--task`); without it they build small random models on a 3x3 grid, which shows
the contract, not learning. RLlib's own PPO (with a value function and its defaults) is not the paper's
critic-free PPO (`internal_rl.rl.ppo`); the point is that an off-the-shelf Ray RL library needs no adapter.
"""

import argparse
from pathlib import Path

from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.rl.internal_env import InternalEnv


def make_env(env_config: dict) -> InternalEnv:
    """Build `InternalEnv` inside an RLlib env runner (a separate process): models come from the run folder."""
    import torch

    torch.set_num_threads(1)
    if env_config.get("run"):
        from internal_rl.envs.tasks import parse_task
        from internal_rl.pipeline.rl_stage import env_config_of_run, load_method_metacontroller
        from internal_rl.pipeline.run_folder import RunFolder

        run = Path(env_config["run"])
        base_model = RunFolder(run).base_model()
        task = parse_task(env_config["task"])
        return InternalEnv(base_model, load_method_metacontroller(run, "internal"), env_config_of_run(run, base_model, task),
                           task=task)

    from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
    from internal_rl.models.base_model import BaseModel, BaseModelConfig
    from internal_rl.models.transformer import TransformerConfig

    grid = GridWorldConfig(size=3, n_colours=2, n_walls=0, horizon=8, tasks=((0,),))
    torch.manual_seed(0)
    trunk = TransformerConfig(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32)
    base_model = BaseModel(BaseModelConfig(obs_dim=grid.obs_dim, transformer=trunk)).freeze()
    metacontroller = Metacontroller(MetacontrollerConfig(d_model=16, hook="blocks.0.hook_resid_post", n_z=2, rank=2,
                                                         embedder_width=8)).eval().requires_grad_(False)
    return InternalEnv(base_model, metacontroller, grid, task=(0,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder with pretrain/ and metacontroller/ (default: random tiny models)")
    parser.add_argument("--task", default="0-1-2-3-4-5-6-7-0-1-2-3")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--env-runners", type=int, default=1)
    parser.add_argument("--ray-address", help="Ray cluster (default: a local Ray instance)")
    args = parser.parse_args()

    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    ray.init(address=args.ray_address, include_dashboard=False, logging_level="WARNING")
    register_env("internal_rl/InternalEnv", make_env)
    env_config = {"run": str(Path(args.run).resolve()) if args.run else None, "task": args.task}
    config = (
        PPOConfig()
        .environment("internal_rl/InternalEnv", env_config=env_config)
        .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=4, lr=3e-4)
    )
    algo = config.build_algo()
    for i in range(args.iterations):
        result = algo.train()
        runners = result["env_runners"]
        print(f"iteration {i + 1}: {runners['num_episodes_lifetime']} episodes, mean return "
              f"{runners.get('episode_return_mean', float('nan')):.3f}, mean length (decisions) "
              f"{runners.get('episode_len_mean', float('nan')):.2f}")
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
