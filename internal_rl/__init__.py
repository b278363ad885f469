"""internal-rl: internal reinforcement learning with metacontrollers over the residual stream of
autoregressive models (Kobayashi et al., 2025, arXiv 2512.20605)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("internal-rl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from internal_rl.envs import register_envs as _register_envs

_register_envs()
