"""Codes that name subgoals by construction: internal RL over supervised subgoal controllers (a diagnostic).

Internal RL needs two things from the metacontroller: codes whose controllers each steer the base model
to one subgoal, and a switch that ends a code where its subgoal is done. `SubgoalCodes` stands in for the
metacontroller with the first made right by supervision: its decoder is the supervised controllers U_g
(`analysis/subgoal_controllers.fit_subgoal_controllers`), and a code z in R^K picks the controller of its largest
entry, U(z) = U_argmax(z). The Gaussian code policy then samples a categorical choice whose probabilities
start uniform (argmax of N(0, I)). Its switch is a metacontroller's switching unit or an HMM over the
residual (`rl/hmm_switch.HMMSwitch`) given as `switching`, or none: then the internal env's
`switch="subgoal"` must end codes where the true subgoal changes.

What it measures: if RL over these codes learns a composition and RL over the metacontroller's codes does
not, the RL half works and the codes are what fails; RL's success here is bounded by how well the
supervised controllers steer (the chained steering evaluation).
"""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from internal_rl.common.errors import check
from internal_rl.metacontroller.modules import Metacontroller
from internal_rl.models.controller import ControllerDecoder, ControllerParams
from internal_rl.rl.hmm_switch import HMMSwitch


@dataclass(frozen=True)
class SubgoalCodesConfig:
    """What internal RL reads from a segmenter's config."""

    d_model: int
    n_z: int  # one entry per subgoal controller
    hook: str
    force_switch: bool = False
    label_switches: bool = False


class SubgoalCodes(nn.Module):
    """A frozen segmenter whose code z [.., K] selects the supervised controller U_argmax(z) at `hook`."""

    def __init__(self, decoder: ControllerDecoder, hook: str, switching: Metacontroller | HMMSwitch | None = None):
        super().__init__()
        if switching is not None:
            check(switching.config.d_model == decoder.d_model,
                  f"the switching unit reads d_model={switching.config.d_model}; the controllers d_model={decoder.d_model}")
            check(isinstance(switching, HMMSwitch)
                  or not (switching.config.force_switch or switching.config.label_switches),
                  "the switching metacontroller must have a learned switching unit")
        self.config = SubgoalCodesConfig(d_model=decoder.d_model, n_z=decoder.n_z, hook=hook)
        self.decoder = decoder
        self.switching = switching
        self.eval()
        self.requires_grad_(False)

    def init_switch_state(self, batch_size: int) -> Tensor:
        if self.switching is not None:
            return self.switching.init_switch_state(batch_size)
        return self.decoder.body[0].weight.new_zeros(batch_size, 1)

    def switch_step(self, e_t: Tensor, state: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """beta from the switching metacontroller, fed a zero previous code (its own codes are not these), or
        from the HMM; 0 without either (the env's subgoal switch decides)."""
        if self.switching is None:
            return e_t.new_zeros(e_t.shape[0]), state
        if isinstance(self.switching, HMMSwitch):
            return self.switching.switch_step(e_t, state)
        z0 = e_t.new_zeros(e_t.shape[0], self.switching.config.n_z)
        return self.switching.switch_step(e_t, state, z0)

    def decode(self, z: Tensor) -> ControllerParams:
        """The controller of each code's largest entry."""
        return self.decoder(F.one_hot(z.argmax(-1), self.config.n_z).to(z.dtype))
