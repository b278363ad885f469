"""Internal RL over supervised subgoal controllers: the subgoal switch of the internal env, and codes that pick
one controller each."""

import pytest
import torch
import torch.nn.functional as F

from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.models.base_model import BaseModel, BaseModelConfig
from internal_rl.models.controller import ControllerDecoder, apply_controller
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.subgoal_codes import SubgoalCodes
from internal_rl.rl.training import RLConfig

from helpers import TINY_TRUNK

# Colours 0-1 are subgoal 0 and 2-3 subgoal 1 (the grid world's pairs); the task's subgoal changes once
# colour 1 is reached, which a random model does first in about a quarter of the episodes.
GRID = GridWorldConfig(size=4, n_colours=4, n_walls=1, horizon=20, tasks=((1, 2),))
HOOK = "blocks.0.hook_resid_post"


def tiny_codes(seed: int = 0) -> tuple[BaseModel, SubgoalCodes]:
    torch.manual_seed(seed)
    transformer = TINY_TRUNK
    base = BaseModel(BaseModelConfig(obs_dim=GRID.obs_dim, transformer=transformer, init_scale=1.0)).freeze()
    decoder = ControllerDecoder(n_z=4, d_model=16, rank=2, hidden=8)
    torch.nn.init.normal_(decoder.b_head.weight, std=1.0)  # a fresh decoder's U is 0 for every code
    return base, SubgoalCodes(decoder, HOOK)


def test_subgoal_switch_asks_for_a_code_exactly_where_the_subgoal_changes():
    base, codes = tiny_codes()
    env = BatchedInternalEnv(base, codes, GRID, 64, switch="subgoal")
    env.reset(seed=3)
    table = torch.tensor([0, 0, 1, 1, -1])  # colour -> subgoal; index -1 (-1 target: ended) -> -1
    previous = table[torch.from_numpy(env.env.target())]
    first, later = True, 0
    while not bool(env.done.all()):
        subgoal = table[torch.from_numpy(env.env.target())]
        step = env.step(lambda e, ids: torch.randn(len(ids), 4))
        assert torch.equal(step.decided, step.active & (first | (subgoal != previous)))
        later += 0 if first else int(step.decided.sum())
        first, previous = False, subgoal
    assert later > 0  # some episodes did reach their second subgoal


def test_learned_switch_is_the_default_and_unknown_switches_are_refused():
    base, codes = tiny_codes()
    assert BatchedInternalEnv(base, codes, GRID, 2).switch == "learned"
    with pytest.raises(ConfigError, match="unknown switch"):
        BatchedInternalEnv(base, codes, GRID, 2, switch="oracle")
    with pytest.raises(ConfigError, match="RLConfig.switch"):
        RLConfig(switch="oracle")


def test_a_code_picks_the_controller_of_its_largest_entry():
    _, codes = tiny_codes()
    z = torch.tensor([[0.1, 2.0, -1.0, 0.5], [-3.0, -2.0, -1.0, -0.5]])
    e = torch.randn(2, 16)
    got = apply_controller(e, codes.decode(z))
    want = apply_controller(e, codes.decoder(F.one_hot(torch.tensor([1, 3]), 4).float()))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got[0], apply_controller(e[:1], codes.decoder(F.one_hot(torch.tensor([3]), 4).float()))[0])
    # Without a switching unit the codes never end by themselves: the subgoal switch must end them.
    beta, _ = codes.switch_step(e, codes.init_switch_state(2), z)
    assert torch.equal(beta, torch.zeros(2))
