"""Metacontroller modules and training: shapes and masking, temporal integration, KL, causal switching,
a planted two-phase segmentation recovered, the base model frozen, checkpoints and exact resume; and the
CompILE baseline: its boundary distributions, segments, causal hazard and the planted segmentation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internal_rl.analysis.switching import switch_metrics
from internal_rl.common.config import replace
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.metacontroller.compile import CompILE, CompILEConfig, boundary_log_probs, poisson_length_log_probs
from internal_rl.metacontroller.modules import (
    Metacontroller,
    MetacontrollerConfig,
    kl_to_standard_normal,
    load_metacontroller,
    reverse_valid,
)
from internal_rl.metacontroller.training import (
    MetacontrollerTrainConfig,
    controlled_forward,
    metacontroller_loss,
    preset,
    train_metacontroller,
)
from internal_rl.models.controller import apply_controller

from helpers import TINY_TRUNK

HOOK = "blocks.0.hook_resid_post"
N_ACTIONS = 4


def tiny_config(**kwargs) -> MetacontrollerConfig:
    values = dict(d_model=16, hook=HOOK, n_z=4, enc_hidden=32, dec_hidden=16, n_h=16, n_s=16, rank=4,
                  switch_hidden=16, embedder_width=16)
    return MetacontrollerConfig(**{**values, **kwargs})


class ToyBase(nn.Module):
    """A stand-in for BaseModel with its forward/intervention contract: e = W o at HOOK, logits = R e."""

    n_layers = 2
    d_model = 16

    def __init__(self, obs_dim: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(obs_dim, self.d_model)
        self.readout = nn.Linear(self.d_model, N_ACTIONS)
        with torch.no_grad():
            self.readout.weight.mul_(3.0)
        self.hook_names = (HOOK,)

    def forward(self, obs, *, interventions=None, cache_hooks=()):
        e = self.embed(obs)
        cache = {HOOK: e} if HOOK in cache_hooks else {}
        if interventions and HOOK in interventions:
            e = interventions[HOOK](e)
        return SimpleNamespace(action_params=self.readout(e), obs_params=None, cache=cache)

    def action_distribution(self, action_params):
        return torch.distributions.Categorical(logits=action_params)


def two_phase_dataset(n_episodes: int, seed: int, reveal_in_phase: bool = False) -> TrajectoryDataset:
    """Episodes whose expert repeats action A until a hidden switch step tau, then action B.

    The observation is [one-hot distractor, cue, 1, one-hot A, one-hot B]: the cue marks tau (as reaching
    a colour marks a subgoal change in the grid world), and A and B are revealed only in the last
    observation. So the causal model cannot know them, only the metacontroller's sequence embedder can,
    and since a linear controller of the toy model's e = W o cannot turn "after the cue" into a different
    action, one code per phase is needed: a switch exactly at tau. `reveal_in_phase` shows A at the first
    step and B at tau instead, inside their own phases, for models that encode each segment from its own steps.
    """
    rng = np.random.default_rng(seed)
    obs, actions, phases, starts, lengths = [], [], [], [], []
    step = 0
    for _ in range(n_episodes):
        length = int(rng.integers(10, 15))
        tau = int(rng.integers(3, length - 3))
        a, b = rng.choice(N_ACTIONS, size=2, replace=False)
        o = np.zeros((length, 3 * N_ACTIONS + 2), np.float32)
        o[np.arange(length), rng.integers(0, N_ACTIONS, size=length)] = 1.0
        o[tau, N_ACTIONS] = 1.0
        o[:, N_ACTIONS + 1] = 1.0
        o[0 if reveal_in_phase else -1, N_ACTIONS + 2 + a] = 1.0
        o[tau if reveal_in_phase else -1, 2 * N_ACTIONS + 2 + b] = 1.0
        obs.append(o)
        actions.append(np.where(np.arange(length) < tau, a, b))
        phases.append((np.arange(length) >= tau).astype(np.int8))
        starts.append(step)
        lengths.append(length)
        step += length
    arrays = {
        "observations": np.concatenate(obs),
        "actions": np.concatenate(actions).astype(np.int64),
        "rewards": np.zeros(step, np.float32),
        "targets": np.concatenate(phases),
        "subgoals": np.concatenate(phases),
        "episode_starts": np.array(starts, np.int64),
        "episode_lengths": np.array(lengths, np.int64),
        "tasks": np.zeros((n_episodes, 2), np.int8),
        "final_observations": np.zeros((n_episodes, 3 * N_ACTIONS + 2), np.float32),
    }
    return TrajectoryDataset.from_arrays(arrays, {"env": "two-phase"})


def _padded_batch(b=3, t=7, d=16, seed=0):
    torch.manual_seed(seed)
    e = torch.randn(b, t, d)
    lengths = torch.tensor([t, t - 2, 3])[:b]
    mask = torch.arange(t)[None] < lengths[:, None]
    return e, mask, lengths


def test_shapes():
    config = tiny_config()
    mc = Metacontroller(config)
    e, mask, _ = _padded_batch()
    out = mc(e, mask)
    assert out["z"].shape == out["mu"].shape == out["logvar"].shape == out["z_tilde"].shape == (3, 7, 4)
    assert out["beta"].shape == (3, 7)
    assert out["s"].shape == (3, 16)
    assert out["controller"].batch_shape == (3, 7)
    assert ((out["beta"] >= 0) & (out["beta"] <= 1)).all()
    assert apply_controller(e, out["controller"]).shape == e.shape


@pytest.mark.parametrize("embedder", ["sequence", "reverse"])
def test_padding_does_not_change_valid_steps(embedder):
    mc = Metacontroller(tiny_config(embedder=embedder))
    e, mask, lengths = _padded_batch()
    out = mc(e, mask, sample=False)
    for i, n in enumerate(lengths.tolist()):
        single = mc(e[i : i + 1, :n], sample=False)
        for key in ("z", "beta", "mu", "logvar", "s"):
            got = out[key][i, :n] if (key != "s" or embedder == "reverse") else out[key][i]
            torch.testing.assert_close(got, single[key][0], atol=1e-5, rtol=1e-5)
    # Garbage in the padding changes nothing either.
    e2 = e.clone()
    e2[~mask] = 100.0
    out2 = mc(e2, mask, sample=False)
    torch.testing.assert_close(out2["z"][mask], out["z"][mask], atol=1e-5, rtol=1e-5)


def test_reverse_valid_reverses_each_row_and_keeps_padding():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    out = reverse_valid(x, torch.tensor([5, 3]))
    assert out[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    torch.testing.assert_close(reverse_valid(out, torch.tensor([5, 3])), x)


def test_reverse_embedder_sees_only_the_future():
    mc = Metacontroller(tiny_config(embedder="reverse"))
    e, _, _ = _padded_batch()
    s = mc(e, sample=False)["s"]
    e2 = e.clone()
    e2[:, :3] = torch.randn_like(e2[:, :3])
    s2 = mc(e2, sample=False)["s"]
    torch.testing.assert_close(s2[:, 3:], s[:, 3:])


def test_force_switch_gives_per_step_codes():
    mc = Metacontroller(tiny_config(force_switch=True))
    e, mask, _ = _padded_batch()
    out = mc(e, mask)
    assert (out["beta"] == 1).all()
    torch.testing.assert_close(out["z"], out["z_tilde"])
    beta, _ = mc.switch_step(e[:, 0], mc.init_switch_state(3), torch.zeros(3, 4))
    assert (beta == 1).all()


def test_label_switches_hold_z_over_each_true_segment():
    from internal_rl.metacontroller.modules import label_switch_gate

    labels = torch.tensor([[0, 0, 1, 1, 1, 2, -1], [3, 3, 3, 0, 0, 0, 0]])
    mask = labels >= 0
    gate = label_switch_gate(labels, mask)
    assert gate.tolist() == [[1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0, 0]]

    data = two_phase_dataset(8, seed=7)
    batch = data.batch(np.arange(8))
    mc = Metacontroller(tiny_config(label_switches=True))
    nll, out = controlled_forward(ToyBase(data.obs_dim), mc, batch)
    gate = label_switch_gate(batch["subgoals"], batch["mask"])
    torch.testing.assert_close(out["beta"], gate)
    for i in range(8):
        starts = torch.nonzero(gate[i]).flatten().tolist() + [int(batch["mask"][i].sum())]
        for a, b in zip(starts[:-1], starts[1:]):
            torch.testing.assert_close(out["z"][i, a:b], out["z_tilde"][i, a].expand(b - a, -1))
    with pytest.raises(ConfigError):  # labels are not there at RL time
        mc.switch_step(torch.zeros(2, 16), mc.init_switch_state(2), torch.zeros(2, 4))
    with pytest.raises(ConfigError):
        tiny_config(label_switches=True, force_switch=True)


def _constant_beta(mc: Metacontroller, value: float) -> None:
    with torch.no_grad():
        mc.switching_unit.out.weight.zero_()
        mc.switching_unit.out.bias.fill_(float(torch.logit(torch.tensor(value))) if 0 < value < 1 else 50.0 * (2 * value - 1))


def test_beta_one_gives_per_step_codes():
    mc = Metacontroller(tiny_config())
    _constant_beta(mc, 1.0)
    e, mask, _ = _padded_batch()
    out = mc(e, mask)
    torch.testing.assert_close(out["z"], out["z_tilde"])


def test_beta_zero_holds_z_fixed():
    mc = Metacontroller(tiny_config())
    _constant_beta(mc, 0.0)
    e, mask, _ = _padded_batch()
    out = mc(e, mask)
    # The first step always opens a segment; after it nothing is switched in.
    assert (out["beta"][:, 0] == 1).all()
    torch.testing.assert_close(out["z"], out["z_tilde"][:, :1].expand_as(out["z"]), atol=1e-6, rtol=0)


def test_temporal_integration_equation():
    mc = Metacontroller(tiny_config())
    _constant_beta(mc, 0.3)
    e, mask, _ = _padded_batch()
    out = mc(e, mask)
    z_prev = out["z_tilde"][:, 0]  # beta_1 = 1: z_1 = z~_1
    torch.testing.assert_close(out["z"][:, 0], z_prev)
    for t in range(1, 7):
        z_prev = 0.3 * out["z_tilde"][:, t] + 0.7 * z_prev
        torch.testing.assert_close(out["z"][:, t], z_prev, atol=1e-5, rtol=1e-5)


def test_hard_switch_holds_each_code_exactly_as_internal_rl_does():
    """With the gate thresholded, z is z~ where the switching unit fires and the previous z elsewhere; the
    causal switching step, fed the same held codes, gives the same gate (the internal-RL loop)."""
    torch.manual_seed(0)
    mc = Metacontroller(tiny_config())
    with torch.no_grad():  # a gate that fires at some steps and not others
        mc.switching_unit.out.weight.normal_(0, 2)
        mc.switching_unit.out.bias.fill_(-3.0)
    e, _, _ = _padded_batch()
    out = mc(e, sample=False, hard_switch=True)
    beta, z, z_tilde = out["beta"], out["z"], out["z_tilde"]
    assert set(beta.unique().tolist()) == {0.0, 1.0}
    expected = torch.where(beta[:, 1:, None] > 0, z_tilde[:, 1:], z[:, :-1])
    torch.testing.assert_close(z[:, 1:], expected)
    state, z_prev = mc.init_switch_state(3), torch.zeros(3, 4)
    for t in range(7):
        soft, state = mc.switch_step(e[:, t], state, z_prev)
        torch.testing.assert_close((soft >= 0.5).float(), beta[:, t])
        z_prev = z[:, t]


def test_kl_zero_at_prior_and_matches_torch():
    mu, logvar = torch.zeros(5, 4), torch.zeros(5, 4)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), torch.zeros(5))
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))


def test_switch_step_matches_forward():
    mc = Metacontroller(tiny_config())
    e, _, _ = _padded_batch()
    out = mc(e, sample=False)
    state, z_prev = mc.init_switch_state(3), torch.zeros(3, 4)
    for t in range(7):
        beta, state = mc.switch_step(e[:, t], state, z_prev)
        # At the first step the forward pass forces beta = 1 (internal RL queries the policy there anyway).
        expected = torch.ones(3) if t == 0 else out["beta"][:, t]
        torch.testing.assert_close(beta, expected, atol=1e-5, rtol=1e-5)
        z_prev = out["z"][:, t]


def test_switching_is_causal():
    mc = Metacontroller(tiny_config())
    e, _, _ = _padded_batch()
    mu = mc(e, sample=False)["mu"]
    # With the encoder's proposals fixed, beta_t depends only on e_{1:t}: changing the future changes nothing.
    beta = mc._integrate(mc.switching_unit.context(mc.input_norm(e), _h_prev(mc, e)), mu)[0]
    e2 = e.clone()
    e2[:, 4:] = torch.randn_like(e2[:, 4:])
    beta2 = mc._integrate(mc.switching_unit.context(mc.input_norm(e2), _h_prev(mc, e2)), mu)[0]
    torch.testing.assert_close(beta2[:, :4], beta[:, :4])


def _h_prev(mc, e):
    h, _ = mc.history(mc.input_norm(e))
    return torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)


def test_bad_config_refused():
    with pytest.raises(ConfigError):
        MetacontrollerConfig(alpha=-1.0)
    with pytest.raises(ConfigError):
        MetacontrollerConfig(rank=0)
    with pytest.raises(ConfigError):
        preset("huge")
    with pytest.raises(ConfigError):
        Metacontroller(tiny_config())(torch.randn(2, 3, 8))


def test_no_gradient_reaches_base_model():
    data = two_phase_dataset(8, seed=0)
    base = ToyBase(data.obs_dim)
    base.eval().requires_grad_(False)
    mc = Metacontroller(tiny_config())
    loss, metrics = metacontroller_loss(base, mc, data.batch(np.arange(8)))
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert all(p.grad is not None for p in mc.encoder.parameters())
    assert set(metrics) >= {"loss", "nll", "kl", "switches_per_episode"}


def test_loss_is_masked_mean_of_nll_plus_alpha_kl():
    data = two_phase_dataset(6, seed=1)
    base = ToyBase(data.obs_dim)
    mc = Metacontroller(tiny_config(alpha=0.5))
    batch = data.batch(np.arange(6))
    loss, metrics = metacontroller_loss(base, mc, batch, sample=False)
    torch.testing.assert_close(loss.item(), metrics["nll"] + 0.5 * metrics["kl"], atol=1e-5, rtol=1e-5)
    # U = 0 at init: the NLL is the base model's own.
    logits = base(batch["observations"]).action_params
    nll = -torch.distributions.Categorical(logits=logits).log_prob(batch["actions"].clamp_min(0))
    mask = batch["mask"]
    assert metrics["nll"] == pytest.approx(nll[mask].mean().item(), rel=1e-5)


TRAIN = MetacontrollerTrainConfig(steps=400, batch_size=32, lr=3e-3, weight_decay=0.0, eval_episodes=64,
                                  log_every=50, eval_every=400, checkpoint_every=400, holdout_fraction=0.2)


def exact_switches_on_held_out(model: nn.Module, base: ToyBase, data: TrajectoryDataset,
                               train: MetacontrollerTrainConfig) -> dict[str, float]:
    """Switch precision, recall and F1 (no tolerance) of `model`'s beta on the episodes training held out."""
    _, held_out = data.split(train.holdout_fraction, train.seed)
    batch = held_out.batch(np.arange(held_out.num_episodes))
    with torch.no_grad():
        e = base(batch["observations"], cache_hooks=[HOOK]).cache[HOOK]
        beta = model(e, batch["mask"], sample=False)["beta"]
    lengths = batch["mask"].sum(1).tolist()
    betas = [beta[i, :n].numpy() for i, n in enumerate(lengths)]
    phases = [batch["subgoals"][i, :n].numpy() for i, n in enumerate(lengths)]
    return switch_metrics(betas, phases, tolerance=0)


def test_planted_two_phase_switch_is_found():
    data = two_phase_dataset(400, seed=0)
    base = ToyBase(data.obs_dim)
    mc, summary = train_metacontroller(base, data, tiny_config(alpha=0.1), TRAIN, show_progress=False)
    exact = exact_switches_on_held_out(mc, base, data, TRAIN)
    assert exact["recall"] > 0.95, (exact, summary["final"])  # fires exactly at tau
    assert exact["f1"] > 0.9, (exact, summary["final"])  # and rarely anywhere else
    assert summary["final"]["heldout_nll"] < 0.3


def test_alpha_schedule_delays_then_ramps_the_kl():
    train = replace(TRAIN, steps=6, batch_size=8, alpha_delay_steps=2, alpha_warmup_steps=2, log_every=1)
    assert [train.alpha_scale(s) for s in range(6)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert TRAIN.alpha_scale(0) == 1.0  # no schedule: the paper's constant alpha
    data = two_phase_dataset(40, seed=6)
    charged = []
    train_metacontroller(ToyBase(data.obs_dim), data, tiny_config(alpha=0.4), train, show_progress=False,
                         on_step=lambda step, metrics: charged.append(metrics["alpha"]))
    assert charged == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.4, 0.4])
    with pytest.raises(ConfigError):
        replace(TRAIN, alpha_delay_steps=-1)


def test_switching_unit_frozen_for_its_first_steps():
    from internal_rl.common.seeding import seed_everything
    from internal_rl.metacontroller.training import resolve_config

    data = two_phase_dataset(40, seed=8)
    base = ToyBase(data.obs_dim)
    train = replace(TRAIN, steps=3, batch_size=8, switch_freeze_steps=3)
    config = tiny_config(alpha=0.1)
    frozen, _ = train_metacontroller(base, data, config, train, show_progress=False)
    released, _ = train_metacontroller(base, data, config, replace(train, switch_freeze_steps=1), show_progress=False)
    seed_everything(train.seed)  # training builds its model right after seeding
    initial = Metacontroller(resolve_config(config, base)).state_dict()
    for name, value in frozen.state_dict().items():
        same = torch.equal(value, initial[name])
        assert same == name.startswith("switching_unit."), name  # only the switching unit is untouched
    assert not torch.equal(released.switching_unit.hidden.weight, initial["switching_unit.hidden.weight"])


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    data = two_phase_dataset(60, seed=2)
    base = ToyBase(data.obs_dim)
    train = replace(TRAIN, steps=6, batch_size=8, checkpoint_every=3, eval_every=3)
    config = tiny_config()
    full, _ = train_metacontroller(base, data, config, train, checkpoint_dir=tmp_path / "a", log_dir=tmp_path / "tb_a", show_progress=False)

    # Interrupt after step 3 (the checkpoint written there), then resume from it.
    class Stop(Exception):
        pass

    def stop_at_4(step, metrics):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        train_metacontroller(base, data, config, train, checkpoint_dir=tmp_path / "b", show_progress=False, on_step=stop_at_4)
    resumed, summary = train_metacontroller(base, data, config, train, checkpoint_dir=tmp_path / "b", resume=True, show_progress=False)
    assert summary["resumed_from"] == 3
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    loaded = load_metacontroller(tmp_path / "b")
    assert loaded.config.hook == HOOK and loaded.config.n_z == 4
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(CheckpointError):
        train_metacontroller(base, data, tiny_config(alpha=0.7), train, checkpoint_dir=tmp_path / "b", resume=True, show_progress=False)


def test_cotraining_trains_the_base_model_and_resumes_exactly(tmp_path):
    data = two_phase_dataset(60, seed=2)
    train = replace(TRAIN, steps=6, batch_size=8, checkpoint_every=3, eval_every=3)
    config = tiny_config()
    start = ToyBase(data.obs_dim)
    full_base = ToyBase(data.obs_dim)
    full, _ = train_metacontroller(full_base, data, config, train, checkpoint_dir=tmp_path / "a", show_progress=False,
                                   cotrain=True)
    assert not torch.allclose(full_base.embed.weight, start.embed.weight)  # the base model learned too
    assert not any(p.requires_grad for p in full_base.parameters())  # and is frozen at the end

    class Stop(Exception):
        pass

    def stop_at_4(step, metrics):
        if step == 4:
            raise Stop

    base = ToyBase(data.obs_dim)
    with pytest.raises(Stop):
        train_metacontroller(base, data, config, train, checkpoint_dir=tmp_path / "b", show_progress=False,
                             on_step=stop_at_4, cotrain=True)
    base = ToyBase(data.obs_dim)  # a fresh process: the base model's trained weights come from the checkpoint
    resumed, summary = train_metacontroller(base, data, config, train, checkpoint_dir=tmp_path / "b", resume=True,
                                            show_progress=False, cotrain=True)
    assert summary["resumed_from"] == 3
    for model_full, model_resumed in ((full, resumed), (full_base, base)):
        for (name, p), q in zip(model_full.state_dict().items(), model_resumed.state_dict().values()):
            torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    with pytest.raises(CheckpointError, match="jointly"):
        train_metacontroller(ToyBase(data.obs_dim), data, config, train, checkpoint_dir=tmp_path / "b", resume=True,
                             show_progress=False)


def test_real_base_model_frozen_and_hook_resolved():
    from internal_rl.metacontroller.training import freeze, resolve_config
    from internal_rl.models.base_model import BaseModel, BaseModelConfig
    from internal_rl.models.transformer import TransformerConfig

    data = two_phase_dataset(6, seed=3)
    torch.manual_seed(0)
    trunk = TransformerConfig(d_model=16, n_layers=4, n_heads=2, d_head=8, d_mlp=32)
    base = freeze(BaseModel(BaseModelConfig(obs_dim=data.obs_dim, action_dim=N_ACTIONS, obs_head="gaussian", transformer=trunk)))
    config = resolve_config(MetacontrollerConfig(d_model=8, n_z=4, rank=4), base)
    assert config.hook == "blocks.1.hook_resid_post" and config.d_model == 16
    mc = Metacontroller(config)
    loss, _ = metacontroller_loss(base, mc, data.batch(np.arange(6)))
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert mc.controller_decoder.b_head.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        resolve_config(MetacontrollerConfig(hook="blocks.9.hook_resid_post"), base)


def test_traces_compare_with_the_uncontrolled_base_model():
    from internal_rl.analysis.switching import collect_traces, switching_report
    from internal_rl.metacontroller.training import freeze, resolve_config
    from internal_rl.models.base_model import BaseModel, BaseModelConfig

    data = two_phase_dataset(8, seed=5)
    torch.manual_seed(0)
    trunk = TINY_TRUNK
    base = freeze(BaseModel(BaseModelConfig(obs_dim=data.obs_dim, action_dim=N_ACTIONS, transformer=trunk)))
    mc = Metacontroller(resolve_config(MetacontrollerConfig(d_model=8, n_z=4, rank=4), base)).eval()
    report = switching_report(collect_traces(base, mc, data, 8))
    # A fresh decoder gives U = 0: the controlled model is the base model, and the rate is the encoder's KL.
    assert report["action_nll"] == pytest.approx(report["base_action_nll"], abs=1e-6)
    assert report["kl_per_episode"] > 0
    with torch.no_grad():
        nn.init.normal_(mc.controller_decoder.b_head.weight, std=0.5)
    report = switching_report(collect_traces(base, mc, data, 8))
    assert abs(report["action_nll"] - report["base_action_nll"]) > 1e-4


def test_cli_refuses_run_without_base_model(tmp_path, capsys):
    from internal_rl.cli import main

    assert main(["metacontroller", "--run", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["analyse", "--run", str(tmp_path)]) == 2


def test_cli_end_to_end_on_tiny_run(tmp_path, capsys):
    from internal_rl.cli import main
    from internal_rl.common.config import load_json
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.models.base_model import BaseModelConfig, load_base_model
    from internal_rl.models.pretraining import PretrainConfig
    from internal_rl.pipeline.pretrain_stage import run_pretraining

    data_dir, run = tmp_path / "data", tmp_path / "run"
    data = two_phase_dataset(150, seed=4)
    data.save(data_dir)
    trunk = TINY_TRUNK
    model = BaseModelConfig(obs_dim=data.obs_dim, action_dim=N_ACTIONS, transformer=trunk)
    run_pretraining(PretrainConfig(model=model, steps=2, batch_size=8, eval_rollouts=0), data_dir, run,
                    show_progress=False)

    assert main(["metacontroller", "--run", str(run), "--steps", "2"]) == 0
    assert main(["metacontroller", "--run", str(run), "--steps", "2"]) == 2  # refuses to overwrite
    assert main(["metacontroller", "--run", str(run), "--steps", "3", "--resume"]) == 0
    assert main(["metacontroller", "--run", str(run), "--steps", "2", "--force-switch"]) == 0
    assert load_metacontroller(run / "metacontroller-no-switch").config.force_switch
    assert RunFolder(run).metacontroller().config.hook == "blocks.0.hook_resid_post"
    assert main(["analyse", "--run", str(run), "--episodes", "20"]) == 0
    report = load_json(run / "switching.json")
    assert 0.0 <= report["subgoal_switches"]["f1"] <= 1.0 and report["episodes"] == 15  # the held-out 10%
    assert (run / "switching_beta.png").is_file()
    # The co-training baseline: its own base model, from random weights, beside its metacontroller.
    assert main(["metacontroller", "--run", str(run), "--steps", "2", "--cotrain", "scratch", "--force-switch"]) == 2
    assert main(["metacontroller", "--run", str(run), "--steps", "2", "--cotrain", "scratch"]) == 0
    stage = run / "metacontroller-cotrained"
    cotrained, pretrained = RunFolder(run).base_model(stage.name), RunFolder(run).base_model("metacontroller")
    assert torch.equal(cotrained.ln_final.weight, load_base_model(stage / "base_model").ln_final.weight)
    assert torch.equal(pretrained.ln_final.weight, load_base_model(RunFolder(run).pretrain).ln_final.weight)
    assert not torch.equal(cotrained.obs_embed.weight, pretrained.obs_embed.weight)
    assert main(["analyse", "--run", str(run), "--stage", stage.name, "--episodes", "20"]) == 0
    assert (run / "switching_metacontroller-cotrained.json").is_file()
    # The CompILE baseline, against the pretrained base model.
    assert main(["metacontroller", "--run", str(run), "--steps", "2", "--compile", "--cotrain", "scratch"]) == 2
    assert main(["metacontroller", "--run", str(run), "--steps", "2", "--compile"]) == 0
    assert isinstance(load_metacontroller(run / "compile"), CompILE)
    assert main(["analyse", "--run", str(run), "--stage", "compile", "--episodes", "20"]) == 0
    assert load_json(run / "switching_compile.json")["metacontroller"]["max_segments"] == 4
    assert main(["analyse", "--run", str(run), "--alpha-sweep", "0,0.5", "--steps", "2", "--episodes", "10"]) == 0
    assert [row["alpha"] for row in load_json(run / "alpha_sweep.json")["rows"]] == [0.0, 0.5]
    assert "switch F1" in capsys.readouterr().out


# --- the CompILE baseline -----------------------------------------------------------------------------------


def tiny_compile(**kwargs) -> CompILEConfig:
    return CompILEConfig(**{**dict(d_model=16, hook=HOOK, n_z=4, hidden=16, dec_hidden=16, rank=4), **kwargs})


def _start_distributions(b: int, t: int, lengths: Tensor, seed: int) -> Tensor:
    """Random distributions over positions 0..length (the last one: no segment), [B,T+1]."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(b, t + 1, generator=g) * (torch.arange(t + 1)[None] <= lengths[:, None])
    return start / start.sum(1, keepdim=True)


def test_compile_boundary_and_prior_are_distributions_within_the_episode():
    b, t = 4, 9
    lengths = torch.tensor([9, 5, 1, 3])
    start = _start_distributions(b, t, lengths, seed=0)
    log_q = boundary_log_probs(start.log(), torch.randn(b, t), lengths)
    log_p = poisson_length_log_probs(start, lengths, rate=3.0)
    for log_probs in (log_q, log_p):
        probs = log_probs.exp()
        torch.testing.assert_close(probs.sum(1), torch.ones(b))
        assert (probs[:, 0] < 1e-20).all()  # step 0 always belongs to the first segment
        beyond = torch.arange(t + 1)[None] > lengths[:, None]
        assert (probs[beyond] < 1e-20).all()
    # From a start at step 0 the hazard gives q(t) = h_t * prod_{0<u<t} (1 - h_u), the rest at the end.
    logits = torch.randn(1, t)
    h = torch.sigmoid(logits[0])
    q = boundary_log_probs(F.one_hot(torch.tensor([0]), t + 1).float().log(), logits, torch.tensor([t])).exp()[0]
    expected = [h[u] * torch.prod(1 - h[1:u]) for u in range(1, t)]
    torch.testing.assert_close(q[1:t], torch.stack(expected))
    torch.testing.assert_close(q[t], torch.prod(1 - h[1:]))


def test_compile_prior_mean_segment_length_is_its_rate():
    t = 200
    start = F.one_hot(torch.tensor([0]), t + 1).float()
    p = poisson_length_log_probs(start, torch.tensor([t]), rate=10.0).exp()[0]
    assert float((p[:t] * torch.arange(t)).sum()) == pytest.approx(10.0, abs=1e-3)


def test_compile_hard_segments_partition_each_episode():
    torch.manual_seed(0)
    model = CompILE(tiny_compile(hazard_bias_init=0.0))
    e, mask, lengths = _padded_batch(t=12)
    out = model(e, mask, sample=False)
    segments = out["segments"]
    assert segments.shape == (3, 4, 12) and out["z"].shape == (3, 12, 4) and out["mu"].shape == (3, 4, 4)
    torch.testing.assert_close(segments.sum(1), mask.float())  # each valid step in exactly one segment
    for i, n in enumerate(lengths.tolist()):
        starts = torch.nonzero(out["beta"][i, :n] > 0.5).flatten().tolist()
        owner = segments[i, :, :n].argmax(0)
        assert starts[0] == 0 and starts == [0, *(torch.nonzero(owner[1:] != owner[:-1]).flatten() + 1).tolist()]
        assert len(starts) <= model.config.max_segments
        for s, next_start in zip(starts, [*starts[1:], n]):  # z is held over each segment
            assert torch.equal(out["z"][i, s:next_start], out["z"][i, s].expand(next_start - s, -1))
    assert (out["kl_steps"][:, 1:] == 0).all() and (out["kl_steps"][:, 0] > 0).all()


def test_compile_padding_does_not_change_valid_steps():
    torch.manual_seed(0)
    model = CompILE(tiny_compile(hazard_bias_init=0.0))
    e, mask, lengths = _padded_batch(t=12)
    out = model(e, mask, sample=False)
    for i, n in enumerate(lengths.tolist()):
        alone = model(e[i : i + 1, :n], sample=False)
        torch.testing.assert_close(out["z"][i, :n], alone["z"][0])
        torch.testing.assert_close(out["beta"][i, :n], alone["beta"][0])
        torch.testing.assert_close(out["kl_steps"][i, 0], alone["kl_steps"][0, 0])


def test_compile_switch_step_is_its_causal_hazard():
    torch.manual_seed(0)
    model = CompILE(tiny_compile(hazard_bias_init=0.0)).eval()
    e = torch.randn(2, 6, 16)
    hazard = torch.sigmoid(model.switching_unit(model.input_norm(e)).squeeze(-1))
    state, z = model.init_switch_state(2), torch.zeros(2, 4)
    for t in range(6):
        beta, state = model.switch_step(e[:, t], state, z)
        torch.testing.assert_close(beta, torch.ones(2) if t == 0 else hazard[:, t])


def test_compile_finds_the_planted_two_phase_switch(tmp_path):
    data = two_phase_dataset(400, seed=0, reveal_in_phase=True)
    base = ToyBase(data.obs_dim)
    train = replace(TRAIN, steps=1000, eval_every=1000, checkpoint_every=1000)
    model, summary = train_metacontroller(base, data, tiny_compile(length_rate=5.0), train, show_progress=False,
                                          checkpoint_dir=tmp_path / "compile")
    exact = exact_switches_on_held_out(model, base, data, train)
    assert exact["f1"] > 0.9, (exact, summary["final"])
    assert summary["final"]["heldout_nll"] < 0.3
    loaded = load_metacontroller(tmp_path / "compile")  # the checkpoint loads as CompILE
    assert isinstance(loaded, CompILE) and loaded.config == model.config


def test_the_metacontroller_and_compile_meet_the_segmenter_protocol():
    from internal_rl.metacontroller.segmenter import Segmenter

    for model in (Metacontroller(tiny_config()), CompILE(tiny_compile())):
        assert isinstance(model, Segmenter)
        for field in ("d_model", "hook", "n_z", "rank", "alpha", "force_switch", "label_switches"):
            assert hasattr(model.config, field), (type(model).__name__, field)
