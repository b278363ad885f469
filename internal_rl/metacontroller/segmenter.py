"""What internal RL, the analyses and the trainer ask of a segmenter: the metacontroller (`modules.py`) or the
CompILE baseline (`compile.py`), stated once as a protocol both meet (a test checks each).

A segmenter reads the base model's residual stream e at its controlled hook, cuts it into segments where its
switch gate beta fires, gives each segment a code z, and decodes a code into the controller U(z) applied there.
"""

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from internal_rl.models.controller import ControllerDecoder, ControllerParams


class SegmenterConfig(Protocol):
    """The fields every segmenter's config has."""

    d_model: int
    hook: str | None  # the controlled hook (None: the base model's default, blocks.{L/2 - 1}.hook_resid_post)
    n_z: int
    rank: int | None
    alpha: float  # KL strength
    force_switch: bool  # beta == 1 at every step (the no-temporal-abstraction ablation)
    label_switches: bool  # beta from the true subgoal changes (a diagnostic)


@runtime_checkable
class Segmenter(Protocol):
    """A metacontroller or a baseline with the same forward outputs and causal switching."""

    config: Any  # a SegmenterConfig
    controller_decoder: ControllerDecoder

    def forward(self, e: Tensor, mask: Tensor | None = None, *, sample: bool = True,
                generator: torch.Generator | None = None, beta: Tensor | None = None) -> dict[str, Any]:
        """Segment and encode a padded batch e [B,T,d]: at least z [B,T,n_z], beta [B,T], kl_steps [B,T] and
        the decoded `controller`."""
        ...

    def init_switch_state(self, batch_size: int) -> Tensor:
        """The causal switching state before the first step."""
        ...

    def switch_step(self, e_t: Tensor, state: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One causal step for internal RL: e_t [B,d] -> (beta_t [B], next state); beta is 1 at the first step."""
        ...

    def decode(self, z: Tensor) -> ControllerParams:
        """The controller U(z) for codes z [..., n_z]."""
        ...
