"""The ant trunk: a stack of Hawk residual blocks (paper App. D.1, Table A5).

Defaults are the paper's: d_model 256, depth 8, RG-LRU width 256 with 8 gate heads, MLP 512 with ReLU,
initialiser variance scale 0.1. Each block (`HawkBlock` in `models/hawk.py`: RMSNorm, recurrent mixing,
RMSNorm, MLP) calls the shared hook names, so interventions and caches work as with the transformer.

Like the transformer, the trunk runs a whole sequence (`forward(x, hooks)`) or continues one from a state
(`forward(x, hooks, state)`); `init_state` gives the state before the first step. Unlike a KV cache the
state has a fixed size, whatever the sequence length: per block, the RG-LRU hidden state and the last
conv_width-1 inputs of the causal Conv1D. A pass returns a new state and never writes into the old one.
"""

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from internal_rl.common.errors import ConfigError, check
from internal_rl.models.hawk import HawkBlock, HawkConfig, HawkState
from internal_rl.models.hooks import HookPoints
from internal_rl.models.transformer import init_linear, variance_scaling_


@dataclass(frozen=True)
class HawkTrunkConfig:
    """Sizes of the Hawk trunk (defaults: the paper's ant model, App. D.1)."""

    d_model: int = 256
    n_layers: int = 8
    lru_width: int = 256
    n_heads: int = 8  # diagonal blocks of the RG-LRU gate matrices
    mlp_hidden: int = 512
    conv_width: int = 4
    init_scale: float = 0.1  # variance scale of every dense map's initialiser (see `HawkTrunk`)

    def __post_init__(self) -> None:
        check(
            isinstance(self.n_layers, int) and self.n_layers > 0,
            f"HawkTrunkConfig.n_layers={self.n_layers!r}; expected a positive int",
        )
        check(self.init_scale > 0, f"HawkTrunkConfig.init_scale={self.init_scale}; expected > 0")
        self.block_config()  # validates the block sizes

    def block_config(self) -> HawkConfig:
        """The configuration of each block."""
        return HawkConfig(
            d_model=self.d_model,
            lru_width=self.lru_width,
            n_heads=self.n_heads,
            mlp_hidden=self.mlp_hidden,
            conv_width=self.conv_width,
            w_init_variance_scale=self.init_scale,
        )


class HawkTrunkState(NamedTuple):
    """The decoding state of the trunk: one `HawkState` (conv buffer [B,K-1,W], RG-LRU state [B,W]) per block."""

    blocks: tuple[HawkState, ...]

    def select(self, rows: Tensor) -> "HawkTrunkState":
        """The state of sequences `rows` only (a copy)."""
        return HawkTrunkState(tuple(block.select(rows) for block in self.blocks))


class HawkTrunk(nn.Module):
    """The trunk: a stack of Hawk blocks over embedded observations [B,T,d] -> residual stream [B,T,d].

    Initialisation: every dense map (the recurrent block's input, gate-branch and output projections,
    the RG-LRU's block-diagonal gates, the MLP) is variance-scaled by `init_scale`, as in the transformer.
    The Conv1D filter and the RG-LRU's decay rates keep recurrentgemma's initialisers (filter variance
    0.01 / width; base decay uniform on [0.9, 0.999]): they are not dense maps, and the decay ring sets the
    memory horizon rather than a signal scale.
    """

    def __init__(self, config: HawkTrunkConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.n_layers = config.n_layers
        block_config = config.block_config()
        self.blocks = nn.ModuleList(HawkBlock(block_config, i) for i in range(config.n_layers))
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    init_linear(module, config.init_scale)
            for gate in (block.recurrent.rg_lru.input_gate, block.recurrent.rg_lru.a_gate):
                variance_scaling_(gate.w, config.init_scale, fan_in=gate.w.shape[1])  # w: [heads, in, out]
                nn.init.zeros_(gate.b)

    def init_state(self, batch_size: int, max_len: int) -> HawkTrunkState:
        """The state before the first step for `batch_size` sequences (zeros); its size does not depend on `max_len`."""
        return HawkTrunkState(tuple(block.init_state(batch_size) for block in self.blocks))

    def forward(
        self, x: Tensor, hooks: HookPoints, state: HawkTrunkState | None = None, start: int = 0
    ) -> tuple[Tensor, HawkTrunkState]:
        """Run x [B,T,d] through every block -> (output [B,T,d], the state after the last step).

        Without a state the sequence starts at step 0; with one it continues from it (the caller tracks
        `start`, which the recurrence does not need). The given state is left unchanged.
        """
        if state is None and start != 0:
            raise ConfigError(f"start={start} needs a decoding state; a pass without one starts at position 0")
        block_states = [None] * self.n_layers if state is None else state.blocks
        new_states = []
        for block, block_state in zip(self.blocks, block_states):
            x, block_state = block(x, block_state, hooks)
            new_states.append(block_state)
        return x, HawkTrunkState(tuple(new_states))
