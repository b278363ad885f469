"""The grid-world trunk: a pre-norm causal transformer with T5-style relative position biases (paper App. D.1).

Defaults are the paper's: d_model 256, 4 heads x 64, MLP 512 with ReLU, depth 6, 32 relative-position
buckets, every initialiser variance-scaled by 0.1. Read top to bottom: config, initialiser, position
bias, attention, MLP, block, trunk.

The trunk works in two modes with one code path. `forward(x, hooks)` runs a whole sequence from step 0.
`forward(x, hooks, state=cache, start=p)` continues a sequence from position p with a KV cache
(`init_state` preallocates it to `max_len`): the new keys and values are written at positions p..p+T-1
and the queries attend to positions 0..p+T-1. With T = 1 this is incremental decoding at the cost of a
single-token forward. The position bias depends only on absolute positions (key minus query), so both
modes compute the same function.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internal_rl.common.errors import ConfigError, check
from internal_rl.models.hooks import HookPoints, hook_name


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the transformer trunk (defaults: the paper's grid-world model, App. D.1)."""

    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_head: int = 64
    d_mlp: int = 512
    n_buckets: int = 32  # relative-position buckets (T5): half exact offsets, half log-spaced
    max_distance: int = 128  # offsets at or beyond this share the last bucket
    init_scale: float = 0.1  # variance scale of every initialiser

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "max_distance"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"TransformerConfig.{name}={value!r}; expected a positive int")
        check(self.n_buckets >= 2, f"TransformerConfig.n_buckets={self.n_buckets}; expected >= 2")
        check(self.init_scale > 0, f"TransformerConfig.init_scale={self.init_scale}; expected > 0")


def variance_scaling_(weight: Tensor, scale: float, fan_in: int | None = None) -> Tensor:
    """Fill `weight` like JAX's variance_scaling(scale, "fan_in", "truncated_normal"); return it.

    The standard deviation is sqrt(scale / fan_in), corrected for the truncation at two deviations.
    """
    fan_in = weight.shape[-1] if fan_in is None else fan_in
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; dividing by it restores the target std.
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def init_linear(linear: nn.Linear, scale: float) -> nn.Linear:
    """Variance-scaled weights and zero bias: the initialisation of every linear map in the base model."""
    variance_scaling_(linear.weight, scale)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def relative_position_bucket(relative_position: Tensor, n_buckets: int, max_distance: int) -> Tensor:
    """T5's causal bucketing of key-minus-query offsets (<= 0): exact for small distances, log-spaced beyond."""
    distance = (-relative_position).clamp(min=0)
    max_exact = n_buckets // 2
    # Distances >= max_exact share log-spaced buckets up to max_distance; clamp keeps log() finite.
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (n_buckets - max_exact)).long()).clamp(max=n_buckets - 1)
    return torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per head and distance bucket, added to the attention logits; -inf on the future."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_buckets = config.n_buckets
        self.max_distance = config.max_distance
        self.embedding = nn.Embedding(config.n_buckets, config.n_heads)
        # A bucket lookup is a linear map of a one-hot vector, so it is scaled with fan_in = n_buckets.
        variance_scaling_(self.embedding.weight, config.init_scale, fan_in=config.n_buckets)

    def forward(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """Absolute positions [Tq], [Tk] -> additive attention mask [H, Tq, Tk]."""
        relative = key_positions[None, :] - query_positions[:, None]  # [Tq, Tk]
        buckets = relative_position_bucket(relative, self.n_buckets, self.max_distance)
        bias = self.embedding(buckets).permute(2, 0, 1)  # [H, Tq, Tk]
        return bias.masked_fill(relative > 0, float("-inf"))


class KVCache(NamedTuple):
    """Keys and values of every layer, preallocated to max_len: each [L, B, H, max_len, d_head]."""

    keys: Tensor
    values: Tensor

    def select(self, rows: Tensor) -> "KVCache":
        """The cache of sequences `rows` only (a copy)."""
        return KVCache(self.keys[:, rows], self.values[:, rows])


class Attention(nn.Module):
    """Multi-head causal self-attention with relative position biases, via scaled_dot_product_attention."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.qkv = init_linear(nn.Linear(config.d_model, 3 * config.n_heads * config.d_head), config.init_scale)
        self.out = init_linear(nn.Linear(config.n_heads * config.d_head, config.d_model), config.init_scale)
        self.position_bias = RelativePositionBias(config)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> Tensor:
        """x [B,T,d] at positions start..start+T-1 -> [B,T,d]; with a cache, also attends to its positions < start."""
        batch, steps, _ = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x [B,H,T,dh]
        end = start + steps
        if cache is not None:
            cache.keys[layer, :, :, start:end] = k
            cache.values[layer, :, :, start:end] = v
            k, v = cache.keys[layer, :, :, :end], cache.values[layer, :, :, :end]
        positions = torch.arange(end, device=x.device)
        mask = self.position_bias(positions[start:], positions)  # [H, T, end]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B,H,T,dh]
        return self.out(y.transpose(1, 2).reshape(batch, steps, self.n_heads * self.d_head))


class MLP(nn.Module):
    """Channel mixing: Linear -> ReLU -> Linear."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.up = init_linear(nn.Linear(config.d_model, config.d_mlp), config.init_scale)
        self.down = init_linear(nn.Linear(config.d_mlp, config.d_model), config.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + Attention(LN x), then + MLP(LN x), with hook points around both."""

    def __init__(self, config: TransformerConfig, index: int):
        super().__init__()
        self.index = index
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, hooks: HookPoints, cache: KVCache | None = None, start: int = 0) -> Tensor:
        x = hooks(hook_name(self.index, "resid_pre"), x)
        x = x + self.attn(self.ln_attn(x), cache, self.index, start)
        x = hooks(hook_name(self.index, "resid_mid"), x)
        x = x + self.mlp(self.ln_mlp(x))
        return hooks(hook_name(self.index, "resid_post"), x)


class Transformer(nn.Module):
    """The trunk: a stack of blocks over embedded observations [B,T,d] -> residual stream [B,T,d]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.n_layers = config.n_layers
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))

    def init_state(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` steps."""
        c = self.config
        p = self.blocks[0].attn.qkv.weight
        shape = (c.n_layers, batch_size, c.n_heads, max_len, c.d_head)
        return KVCache(p.new_zeros(shape), p.new_zeros(shape))

    def forward(
        self, x: Tensor, hooks: HookPoints, state: KVCache | None = None, start: int = 0
    ) -> tuple[Tensor, KVCache | None]:
        """Run x [B,T,d] (positions start..start+T-1) through every block -> (output [B,T,d], state).

        Without a state the sequence starts at position 0. With one, it is updated in place (the caller
        tracks `start`); gradients through a cached pass are not supported, since later steps overwrite it.
        """
        if state is None and start != 0:
            raise ConfigError(f"start={start} needs a KV cache; a pass without one starts at position 0")
        if state is not None and start + x.shape[1] > state.keys.shape[3]:
            raise ConfigError(f"KV cache full: position {start + x.shape[1]} exceeds max_len {state.keys.shape[3]}")
        for block in self.blocks:
            x = block(x, hooks, state, start)
        return x, state
