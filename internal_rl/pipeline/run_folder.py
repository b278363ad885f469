"""The run folder: the one place that knows where a run's stages, checkpoints and result files live.

Every stage writes only its own part (`reproduce` runs them all in order):

    RUN/reproduce.json          the preset this folder was started with (a resume must use the same one)
    RUN/data/                   expert dataset (manifest.json, trajectories.npz)
    RUN/data-clean/             the expert's noiseless actions (D*), for controllers and metacontroller
    RUN/pretrain/               base model checkpoint/, tb/, eval.json
    RUN/probes.json, .png       linear probes per layer
    RUN/steering.json, .png     supervised subgoal controllers per layer
    RUN/steering_controllers/<hook>/   each layer's fitted controller decoder (a checkpoint folder)
    RUN/<metacontroller stage>/ checkpoint/, tb/, summary.json (and base_model/ for the co-trained one):
                                metacontroller, metacontroller-no-switch, metacontroller-label-switches,
                                metacontroller-cotrained, compile, alpha_sweep/alpha_<a>
    RUN/hmm-switch/, RUN/label-free-codes/   checkpoint/, summary.json: the label-free chain's switch and
                                code controllers (`reproduce --preset stepping-stone`, a deviation)
    RUN/switching<suffix>.json, switching_beta<suffix>.png   the switching analysis of a stage
    RUN/code_replay<suffix>.json                             grid world: the stage's codes replayed on the RL task
    RUN/alpha_sweep.json, .png  one metacontroller per alpha
    RUN/rl/<method>/seed_<k>.json, tensorboard/seed_<k>/     RL learning curves
    RUN/rl/<method>/checkpoint_seed_<k>/                     an unfinished RL run (`rl --resume` continues it)
    RUN/videos/*.gif, videos.json   pinpad: expert, base model, supervised and discovered controller episodes
    RUN/stages/<stage>.json     marker of a finished stage (its summary and wall time)
    RUN/report.md, results.json, figures/

A stage's <suffix> is "" for the default metacontroller stage and "_<stage>" for the others. The layout is
that of every run folder written so far, so old runs resume unchanged.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internal_rl.common.config import load_json
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import MANIFEST
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.envs.registry import spec_of_config
from internal_rl.envs.tasks import Task
from internal_rl.metacontroller.modules import find_metacontroller_checkpoint, load_metacontroller
from internal_rl.metacontroller.segmenter import Segmenter
from internal_rl.models.base_model import CHECKPOINT_SUBDIR, BaseModel, find_base_model_checkpoint, load_base_model

DATA = "data"
CLEAN_DATA = "data-clean"  # D*, beside RUN/data (D)
PRETRAIN = "pretrain"
METACONTROLLER_DIR = "metacontroller"
NO_SWITCH_DIR = "metacontroller-no-switch"  # the force_switch (beta == 1) ablation
LABEL_SWITCHES_DIR = "metacontroller-label-switches"  # the label_switches diagnostic
COTRAINED_DIR = "metacontroller-cotrained"  # the co-training baseline: trained jointly with its own base model
COMPILE_DIR = "compile"  # the CompILE baseline
HMM_SWITCH_DIR = "hmm-switch"  # the label-free chain's switch (analysis/label_free_codes.py)
LABEL_FREE_DIR = "label-free-codes"  # the label-free chain's code controllers
COTRAINED_BASE_SUBDIR = "base_model"  # the co-trained base model's checkpoint folder, inside its stage folder
RL_DIR = "rl"
STAGES_DIR = "stages"
FIGURES_DIR = "figures"
VIDEOS_DIR = "videos"
STEERING_CONTROLLERS = "steering_controllers"
ALPHA_SWEEP = "alpha_sweep"
# Folders of the other stages: never a metacontroller stage's name.
RESERVED = (PRETRAIN, DATA, CLEAN_DATA, RL_DIR, STAGES_DIR, FIGURES_DIR, HMM_SWITCH_DIR, LABEL_FREE_DIR)
# The metacontroller stage each RL method acts through (raw-action RL has none).
METACONTROLLER_DIRS: dict[str, str] = {"internal": METACONTROLLER_DIR, "no-switch": NO_SWITCH_DIR,
                                       "cotrained": COTRAINED_DIR, "compile": COMPILE_DIR}


def stage_suffix(stage_name: str) -> str:
    """What an analysis of metacontroller stage `stage_name` appends to its result files' names ("" for the
    default stage): switching.json, switching_metacontroller-no-switch.json, ..."""
    return "" if stage_name == METACONTROLLER_DIR else f"_{stage_name}"


@dataclass(frozen=True)
class RunFolder:
    """Where everything of the run at `root` lives, and what the run recorded (its dataset, its env)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- datasets and stage folders ---

    @property
    def data(self) -> Path:
        return self.root / DATA

    @property
    def clean_data(self) -> Path:
        return self.root / CLEAN_DATA

    @property
    def pretrain(self) -> Path:
        return self.root / PRETRAIN

    @property
    def pretrain_eval(self) -> Path:
        return self.pretrain / "eval.json"

    def stage(self, name: str) -> Path:
        """A stage folder (pretrain, a metacontroller stage, alpha_sweep/alpha_<a>)."""
        return self.root / name

    def checkpoint(self, stage: str) -> Path:
        """The checkpoint folder of `stage` (replaced atomically at every save)."""
        return self.stage(stage) / CHECKPOINT_SUBDIR

    def tensorboard(self, stage: str) -> Path:
        return self.stage(stage) / "tb"

    def stage_summary(self, stage: str) -> Path:
        """What `stage` writes beside its checkpoint: the pretrain stage's eval.json, a metacontroller stage's
        summary.json."""
        return self.pretrain_eval if stage == PRETRAIN else self.stage(stage) / "summary.json"

    def cotrained_base_model(self, stage: str) -> Path:
        """The checkpoint folder of the base model co-trained with `stage`'s metacontroller."""
        return self.stage(stage) / COTRAINED_BASE_SUBDIR

    # --- result files ---

    @property
    def probes(self) -> Path:
        return self.root / "probes.json"

    @property
    def probes_plot(self) -> Path:
        return self.root / "probes.png"

    @property
    def steering(self) -> Path:
        return self.root / "steering.json"

    @property
    def steering_plot(self) -> Path:
        return self.root / "steering.png"

    def steering_controller(self, hook: str) -> Path:
        """The checkpoint folder of the supervised controller decoder fitted at `hook`."""
        return self.root / STEERING_CONTROLLERS / hook

    def switching(self, stage: str = METACONTROLLER_DIR) -> Path:
        """The switching analysis of metacontroller stage `stage` (`stage` may be a path: its last part names it)."""
        return self.root / f"switching{stage_suffix(Path(stage).name)}.json"

    def switching_plot(self, stage: str = METACONTROLLER_DIR) -> Path:
        return self.root / f"switching_beta{stage_suffix(Path(stage).name)}.png"

    def code_replay(self, stage: str = METACONTROLLER_DIR) -> Path:
        return self.root / f"code_replay{stage_suffix(stage)}.json"

    @staticmethod
    def alpha_sweep_stage(alpha: float) -> str:
        """The stage name of the alpha sweep's metacontroller for `alpha`."""
        return f"{ALPHA_SWEEP}/alpha_{alpha:g}"

    @property
    def alpha_sweep(self) -> Path:
        return self.root / f"{ALPHA_SWEEP}.json"

    @property
    def alpha_sweep_plot(self) -> Path:
        return self.root / f"{ALPHA_SWEEP}.png"

    @property
    def rl(self) -> Path:
        return self.root / RL_DIR

    def rl_method(self, method: str) -> Path:
        return self.rl / method

    def rl_methods(self) -> list[Path]:
        """The RUN/rl/<method>/ folders present, in no particular order."""
        return [p for p in self.rl.glob("*") if p.is_dir()]

    def rl_result(self, method: str, seed: int) -> Path:
        return self.rl_method(method) / f"seed_{seed}.json"

    def rl_checkpoint(self, method: str, seed: int) -> Path:
        """An unfinished RL run's policy and training state (removed once its result is written)."""
        return self.rl_method(method) / f"checkpoint_seed_{seed}"

    def rl_tensorboard(self, method: str, seed: int) -> Path:
        return self.rl_method(method) / "tensorboard" / f"seed_{seed}"

    @property
    def videos(self) -> Path:
        return self.root / VIDEOS_DIR

    @property
    def videos_record(self) -> Path:
        return self.videos / "videos.json"

    @property
    def stage_markers(self) -> Path:
        return self.root / STAGES_DIR

    def stage_marker(self, name: str) -> Path:
        return self.stage_markers / f"{name}.json"

    @property
    def reproduce_record(self) -> Path:
        return self.root / "reproduce.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def figures(self) -> Path:
        return self.root / FIGURES_DIR

    # --- what the run recorded ---

    def dataset(self) -> Path:
        """The dataset folder pretraining recorded in the base model's checkpoint config ("dataset": {"path": ...})."""
        config_path = self.base_model_checkpoint() / "config.json"
        recorded = load_json(config_path).get("dataset")
        if isinstance(recorded, dict) and isinstance(recorded.get("path"), str):
            return Path(recorded["path"])
        raise ConfigError(f"{config_path} records no dataset path (expected 'dataset': {{'path': ...}}); pass --data DIR")

    def dataset_or(self, data: Path | None) -> Path:
        """`data` if given, else the dataset the run's base model was trained on."""
        return Path(data) if data is not None else self.dataset()

    def env_config(self) -> Any:
        """The config of the environment the run's pretraining data came from (its dataset manifest)."""
        data_dir = self.dataset()
        manifest_path = data_dir / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"the dataset {data_dir} recorded by the base model of {self.root} is missing "
                                  f"(no {MANIFEST})")
        return env_config_from_manifest(load_json(manifest_path))

    def posttrain_task(self) -> Task:
        """The paper's post-training task of the environment the run was pretrained in."""
        return spec_of_config(self.env_config()).posttrain_task

    def base_model_checkpoint(self, stage: str | None = None) -> Path:
        """The checkpoint folder of the base model that metacontroller stage `stage` acts through: the one
        co-trained with it (STAGE/base_model/) where there is one, else the run's pretrained base model (also for
        `stage` None); CheckpointError if there is none."""
        if stage is not None and self.cotrained_base_model(stage).is_dir():
            return find_base_model_checkpoint(self.cotrained_base_model(stage))
        return find_base_model_checkpoint(self.pretrain)

    def base_model(self, stage: str | None = None, *, frozen: bool = True) -> BaseModel:
        """The base model that metacontroller stage `stage` acts through (see `base_model_checkpoint`), frozen by
        default."""
        return load_base_model(self.base_model_checkpoint(stage), frozen=frozen)

    def metacontroller_checkpoint(self, stage: str = METACONTROLLER_DIR) -> Path:
        """The checkpoint folder of `stage`'s metacontroller (or CompILE baseline); CheckpointError if there is none."""
        return find_metacontroller_checkpoint(self.stage(stage))

    def metacontroller(self, stage: str = METACONTROLLER_DIR) -> Segmenter:
        """The frozen metacontroller (or CompILE baseline) of `stage`."""
        return load_metacontroller(self.metacontroller_checkpoint(stage))
