"""Internal RL: InternalEnv, the critic-free PPO algorithm, and raw-action baselines."""
