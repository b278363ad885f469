"""The label-free HMM switch: its online filter is hmmlearn's forward pass, it finds planted segments, and it
ends codes in the internal env."""

import numpy as np
import torch

from internal_rl.analysis.switching import switch_metrics
from internal_rl.rl.hmm_switch import fit_hmm_switch, load_hmm_switch, save_hmm_switch
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.subgoal_codes import SubgoalCodes

from test_subgoal_codes import GRID, HOOK, tiny_codes


def planted(n_episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Episodes of 3 segments (lengths 5-15), each segment one of 3 phases with its own mean in 16 dimensions
    plus unit noise: (residual [N, 16], lengths, the phase labels per episode)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 16))
    xs, labels = [], []
    for _ in range(n_episodes):
        phases = rng.permutation(3)
        label = np.concatenate([np.full(rng.integers(5, 16), p) for p in phases])
        labels.append(label)
        xs.append(centres[label] + rng.normal(size=(len(label), 16)))
    return np.concatenate(xs).astype(np.float32), np.array([len(label) for label in labels]), labels


def test_the_filter_is_hmmlearns_forward_pass_and_finds_planted_switches(tmp_path):
    x, lengths, labels = planted(200)
    switch = fit_hmm_switch(x, lengths, HOOK, n_states=3, n_components=4, iterations=10)
    # The filtered posterior at an episode's last step is the smoothed one there (hmmlearn's forward-backward).
    from hmmlearn.hmm import GaussianHMM
    reference = GaussianHMM(3, covariance_type="diag", init_params="", params="")
    reference.startprob_, reference.transmat_ = switch.log_start.exp().numpy(), switch.log_trans.exp().numpy()
    reference.means_ = switch.means.numpy()
    reference.covars_ = switch.variances.numpy()
    episode = torch.from_numpy(x[: lengths[0]])
    state = switch.init_switch_state(1)
    for t in range(len(episode)):
        _, state = switch.switch_step(episode[t : t + 1], state)
    want = reference.predict_proba(switch.project(episode).numpy())[-1]
    np.testing.assert_allclose(state[0, :3].exp().numpy(), want, atol=1e-4)
    # The planted phase changes are found, and nothing else (two per episode; beta = 1 at the first step).
    starts = np.r_[0, np.cumsum(lengths)]
    betas = [switch.filter(torch.from_numpy(x[a:b])[None])[0][0].numpy() for a, b in zip(starts[:-1], starts[1:])]
    assert all(beta[0] == 1 for beta in betas)
    assert switch_metrics(betas, labels, tolerance=1)["f1"] > 0.95
    save_hmm_switch(tmp_path / "hmm", switch)
    again = load_hmm_switch(tmp_path / "hmm")
    assert torch.equal(again.filter(episode[None])[1], switch.filter(episode[None])[1])


def test_an_hmm_switch_ends_codes_in_the_internal_env():
    base, codes = tiny_codes()
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    switch = fit_hmm_switch(x, np.array([200, 200]), HOOK, n_states=2, n_components=2, stay=0.5, iterations=2)
    env = BatchedInternalEnv(base, SubgoalCodes(codes.decoder, HOOK, switch), GRID, 16, switch="learned")
    env.reset(seed=0)
    decisions = 0
    while not bool(env.done.all()):
        step = env.step(lambda e, ids: torch.randn(len(ids), 4))
        assert torch.equal(step.decided, step.active & (step.beta >= 0.5))
        decisions += int(step.decided.sum())
    assert decisions > 16  # beyond the first step's, where beta is always 1
