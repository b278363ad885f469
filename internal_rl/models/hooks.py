"""Hook points: named places in the residual stream where activations are read and rewritten.

Names follow TransformerLens: block l of an L-block trunk has `blocks.{l}.hook_resid_pre` (its input),
`blocks.{l}.hook_resid_mid` (after the mixing sub-block: attention or recurrence) and
`blocks.{l}.hook_resid_post` (after the MLP, i.e. its output). A trunk calls a `HookPoints` object at each
of them; it records the activations asked for and applies the interventions given. Every trunk (the
transformer, later the Hawk trunk) uses these names, so analysis and control code never depend on which
trunk is inside.

The paper indexes the residual stream by layer l in 0..L (0 = before the first block, l = after block l);
`layer_hook` translates that index to a hook name, and `controlled_hook` names the paper's controlled
point, layer L/2.
"""

from typing import Callable, Iterable, Mapping

from torch import Tensor

from internal_rl.common.errors import ConfigError

HOOK_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

Intervention = Callable[[Tensor], Tensor]


def hook_name(block: int, kind: str) -> str:
    """The name of hook point `kind` (one of HOOK_KINDS) of block `block`."""
    return f"blocks.{block}.hook_{kind}"


def all_hook_names(n_layers: int) -> tuple[str, ...]:
    """Every hook name of an `n_layers`-block trunk, in the order a forward pass reaches them."""
    return tuple(hook_name(block, kind) for block in range(n_layers) for kind in HOOK_KINDS)


def validate_hook(name: str, n_layers: int) -> str:
    """Return `name` if it is a hook point of an `n_layers`-block trunk, else raise ConfigError listing the valid ones."""
    if name not in all_hook_names(n_layers):
        raise ConfigError(f"unknown hook {name!r}; valid: blocks.0..{n_layers - 1}.hook_resid_{{pre,mid,post}}")
    return name


def layer_hook(layer: int, n_layers: int) -> str:
    """The hook name of the paper's residual layer `layer` in 0..L: 0 is the first block's input, l >= 1 block l's output."""
    if not 0 <= layer <= n_layers:
        raise ConfigError(f"residual layer {layer} out of range; valid: 0..{n_layers}")
    return hook_name(0, "resid_pre") if layer == 0 else hook_name(layer - 1, "resid_post")


def controlled_hook(n_layers: int) -> str:
    """The paper's controlled point: the residual stream between blocks at layer L/2 (after block 3 of 6)."""
    return layer_hook(n_layers // 2, n_layers)


class HookPoints:
    """What one pass (a forward or a step) does at the hook points: cache some activations, rewrite others.

    `interventions[name](x)` replaces the activation x at `name` (same shape); `cache[name]` holds the
    activation seen at `name` BEFORE its intervention. Cached tensors are not detached: wrap the pass in
    `torch.no_grad()` when gradients are not wanted.
    """

    def __init__(
        self,
        n_layers: int,
        interventions: Mapping[str, Intervention] | None = None,
        cache_hooks: Iterable[str] = (),
    ):
        self.interventions = dict(interventions or {})
        self.cache_hooks = frozenset(cache_hooks)
        for name in [*self.interventions, *self.cache_hooks]:
            validate_hook(name, n_layers)
        self.cache: dict[str, Tensor] = {}

    def __call__(self, name: str, x: Tensor) -> Tensor:
        """Record `x` if `name` is cached, then return the (possibly intervened) activation that flows on."""
        if name in self.cache_hooks:
            self.cache[name] = x
        fn = self.interventions.get(name)
        if fn is None:
            return x
        out = fn(x)
        if out.shape != x.shape:
            raise ConfigError(f"intervention at {name!r} returned shape {tuple(out.shape)}; expected {tuple(x.shape)}")
        return out
