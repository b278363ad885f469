"""The residual-stream controller e <- e + U e and the hypernetwork (controller decoder) z -> U.

Used both by the supervised per-subgoal controllers (z = one-hot subgoal id) and by the metacontroller
(paper Sec. 5, item 6-7). The intervention is a linear map of the residual stream, not an added vector.
The decoder is a feed-forward net with one hidden layer (32); its output is either a low-rank
U = A B^T (A, B in R^{d x r}, r = 16 in the grid world) or a full d x d matrix (rank None, the ant).

The factor B (or the full U) is produced by a zero-initialised output layer, so U = 0 exactly at
initialisation and the controlled model starts as the base model; A is initialised randomly, so the
gradient with respect to B is non-zero from the first step (the LoRA initialisation).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from internal_rl.common.checkpoint import load_checkpoint, save_checkpoint
from internal_rl.common.errors import CheckpointError, check


@dataclass
class ControllerParams:
    """A batch of controllers U [..., d, d]: U = a b^T with a, b [..., d, r] (low rank), or U = a (full, b None);
    `shift` [..., d], if given, is added as well (e + U e + shift: the affine variant, not the paper's)."""

    a: Tensor
    b: Tensor | None
    shift: Tensor | None = None

    @property
    def batch_shape(self) -> torch.Size:
        """The leading shape shared with the activations the controllers apply to."""
        return self.a.shape[:-2]

    def matrix(self) -> Tensor:
        """U [..., d, d] materialised (for inspection and tests; `apply_controller` never builds it)."""
        return self.a if self.b is None else self.a @ self.b.transpose(-1, -2)


def apply_controller(e: Tensor, params: ControllerParams) -> Tensor:
    """e + U e (+ shift) for e [..., d] and controllers whose batch shape equals e's leading shape."""
    column = e.unsqueeze(-1)  # [..., d, 1]
    if params.b is None:
        out = e + (params.a @ column).squeeze(-1)
    else:
        # U e = A (B^T e): two thin batched products instead of a d x d matrix per step (and, on CPU, about
        # twice as fast as the equivalent einsums, which copy their operands).
        coeff = params.b.transpose(-1, -2) @ column  # [..., r, 1]
        out = e + (params.a @ coeff).squeeze(-1)
    return out if params.shift is None else out + params.shift


class ControllerDecoder(nn.Module):
    """The hypernetwork f_hyp: z [..., n_z] -> ControllerParams (U of size d_model x d_model)."""

    def __init__(self, n_z: int, d_model: int, rank: int | None = 16, hidden: int = 32, shift: bool = False):
        super().__init__()
        check(n_z > 0, f"ControllerDecoder n_z={n_z}; expected > 0")
        check(d_model > 0, f"ControllerDecoder d_model={d_model}; expected > 0")
        check(rank is None or 0 < rank <= d_model, f"ControllerDecoder rank={rank}; expected None (full) or 1..{d_model}")
        check(hidden > 0, f"ControllerDecoder hidden={hidden}; expected > 0")
        self.n_z, self.d_model, self.rank, self.hidden = n_z, d_model, rank, hidden
        self.body = nn.Sequential(nn.Linear(n_z, hidden), nn.ReLU())
        if rank is None:
            self.a_head = nn.Linear(hidden, d_model * d_model)
            self.b_head = None
            zero_head = self.a_head
        else:
            self.a_head = nn.Linear(hidden, d_model * rank)
            self.b_head = nn.Linear(hidden, d_model * rank)
            # A ~ O(1/sqrt(d)) per entry so that A v has the scale of a residual direction.
            nn.init.normal_(self.a_head.weight, std=(1.0 / (hidden * d_model)) ** 0.5)
            nn.init.zeros_(self.a_head.bias)
            zero_head = self.b_head
        nn.init.zeros_(zero_head.weight)
        nn.init.zeros_(zero_head.bias)
        # The affine variant (a deviation, for diagnostics): an added vector that does not depend on e,
        # zero at initialisation like U.
        self.shift_head = nn.Linear(hidden, d_model) if shift else None
        if self.shift_head is not None:
            nn.init.zeros_(self.shift_head.weight)
            nn.init.zeros_(self.shift_head.bias)

    def forward(self, z: Tensor) -> ControllerParams:
        """z [..., n_z] -> controllers with batch shape z.shape[:-1]."""
        h = self.body(z)
        d = self.d_model
        shift = None if self.shift_head is None else self.shift_head(h)
        if self.b_head is None:
            return ControllerParams(self.a_head(h).unflatten(-1, (d, d)), None, shift)
        r = self.rank
        return ControllerParams(self.a_head(h).unflatten(-1, (d, r)), self.b_head(h).unflatten(-1, (d, r)), shift)


DECODER_KEY = "controller_decoder"  # in each decoder checkpoint's config.json: the decoder's sizes


def save_controller_decoder(path: Path, decoder: ControllerDecoder) -> None:
    """Write a controller decoder as a checkpoint folder whose config.json records its sizes."""
    sizes = {"n_z": decoder.n_z, "d_model": decoder.d_model, "rank": decoder.rank, "hidden": decoder.hidden,
             "shift": decoder.shift_head is not None}
    save_checkpoint(Path(path), decoder, {DECODER_KEY: sizes})


def load_controller_decoder(path: Path) -> ControllerDecoder:
    """A controller decoder from a checkpoint folder written by `save_controller_decoder`, frozen."""
    weights, config, _ = load_checkpoint(Path(path))
    try:
        decoder = ControllerDecoder(**config[DECODER_KEY])
        decoder.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a controller decoder checkpoint: {str(err).splitlines()[0]}") from None
    return decoder.eval().requires_grad_(False)
