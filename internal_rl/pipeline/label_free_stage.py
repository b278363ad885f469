"""The label-free chain's stages in a run folder (`analysis/label_free_codes.py`, a named deviation): the HMM switch
(RUN/hmm-switch/) and the codes' controllers (RUN/label-free-codes/), both fitted on the training split of
the run's D* (RUN/data-clean), and the segmenter that `rl --method label-free` acts through. The subgoal
labels are read only to score the switch on held-out episodes, never to fit anything."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internal_rl.analysis.label_free_codes import LabelFreeConfig, batched_residuals, discover_codes, fit_switch
from internal_rl.analysis.switching import switch_metrics
from internal_rl.common.config import save_json
from internal_rl.common.errors import CheckpointError
from internal_rl.data.dataset import TrajectoryDataset, load_dataset
from internal_rl.models.controller import load_controller_decoder, save_controller_decoder
from internal_rl.models.hooks import controlled_hook
from internal_rl.pipeline.run_folder import HMM_SWITCH_DIR, LABEL_FREE_DIR, RunFolder
from internal_rl.rl.hmm_switch import HMMSwitch, load_hmm_switch, save_hmm_switch
from internal_rl.rl.subgoal_codes import SubgoalCodes

# D*'s split (the steering fits' fraction): the switch and the codes fit on the first part, the switch is
# scored on up to SCORED_EPISODES of the second.
HOLDOUT_FRACTION = 0.2
SCORED_EPISODES = 500


def _clean_split(run: RunFolder, seed: int) -> tuple[TrajectoryDataset, TrajectoryDataset]:
    if not run.clean_data.is_dir():
        raise CheckpointError(f"the label-free stages fit on D* at {run.clean_data}; none found "
                              "(generate it with `internal-rl generate gridworld --mean-actions`)")
    return load_dataset(run.clean_data).split(HOLDOUT_FRACTION, seed)


@torch.no_grad()
def score_switch(model: torch.nn.Module, dataset: TrajectoryDataset, switch: HMMSwitch) -> dict[str, Any]:
    """Where the switch fires on `dataset`'s episodes against the true subgoal changes (analysis only)."""
    betas, subgoals = [], []
    for _, data, residual in batched_residuals(model, dataset, switch.config.hook):
        beta, _ = switch.filter(residual)
        for b, length in enumerate(data["lengths"].tolist()):
            betas.append(beta[b, :length].numpy())
            subgoals.append(data["subgoals"][b, :length].numpy())
    return switch_scores(betas, subgoals)


def switch_scores(betas: list[np.ndarray], subgoals: list[np.ndarray]) -> dict[str, Any]:
    """Switch precision / recall / F1 against the subgoal changes (`switch_metrics`), and switches per
    episode, predicted and true, of per-episode betas and subgoal labels."""
    return {"switches": switch_metrics(betas, subgoals),
            "switches_per_episode": float(np.mean([(b[1:] > 0.5).sum() for b in betas])),
            "true_switches_per_episode": float(np.mean([(s[1:] != s[:-1]).sum() for s in subgoals]))}


def fit_switch_run(run_dir: Path, config: LabelFreeConfig = LabelFreeConfig()) -> dict[str, Any]:
    """Fit the HMM switch at the controlled layer of RUN's base model; write it and its held-out scores."""
    run = RunFolder(run_dir)
    model = run.base_model()
    train, held_out = _clean_split(run, config.seed)
    switch = fit_switch(model, train, controlled_hook(model.n_layers), config)
    summary = {"config": asdict(config),
               "held_out": score_switch(model, held_out.subset(np.arange(min(SCORED_EPISODES, held_out.num_episodes))), switch)}
    save_hmm_switch(run.checkpoint(HMM_SWITCH_DIR), switch, {"provenance": summary})
    save_json(run.stage_summary(HMM_SWITCH_DIR), summary)
    return summary


def discover_codes_run(run_dir: Path, config: LabelFreeConfig = LabelFreeConfig()) -> dict[str, Any]:
    """Cluster the HMM switch's segments of RUN's D* into codes and fit their controllers; write them."""
    run = RunFolder(run_dir)
    model = run.base_model()
    train, _ = _clean_split(run, config.seed)
    with torch.enable_grad():
        decoder, summary = discover_codes(model, train, _load_switch(run), config)
    summary = {"config": asdict(config), **summary}
    save_controller_decoder(run.checkpoint(LABEL_FREE_DIR), decoder)
    save_json(run.stage_summary(LABEL_FREE_DIR), summary)
    return summary


def _load_switch(run: RunFolder) -> HMMSwitch:
    path = run.checkpoint(HMM_SWITCH_DIR)
    if not path.is_dir():
        raise CheckpointError(f"no label-free switch at {path} (the reproduce stage {HMM_SWITCH_DIR} fits it)")
    return load_hmm_switch(path)


def load_label_free_codes(run_dir: Path) -> SubgoalCodes:
    """The segmenter of `rl --method label-free`: RUN's label-free controllers, ended by its HMM switch."""
    run = RunFolder(run_dir)
    switch = _load_switch(run)
    path = run.checkpoint(LABEL_FREE_DIR)
    if not path.is_dir():
        raise CheckpointError(f"no label-free codes at {path} (the reproduce stage {LABEL_FREE_DIR} fits them)")
    return SubgoalCodes(load_controller_decoder(path), switch.config.hook, switch)
