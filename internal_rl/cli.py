"""The `internal-rl` command line: parses arguments and calls the library; holds no logic.

Every user-facing failure is an `InternalRLError`; it is printed as one line and the exit status is 2.
"""

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from internal_rl.common.errors import ConfigError, InternalRLError


def _on_ray(args: argparse.Namespace) -> bool:
    """Whether --ray / --ray-address asked for Ray; if so, check --workers and start or reach Ray (the import
    is deferred to here)."""
    if not (args.ray or args.ray_address):
        if args.workers is not None:
            raise ConfigError(f"--workers {args.workers} needs --ray or --ray-address (nothing else runs on Ray)")
        return False
    from internal_rl.distributed import check_workers, init_ray

    check_workers(args.workers)
    init_ray(args.ray_address)
    return True


def _add_ray_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", action="store_true", help=f"{what} on a local Ray instance (pip install 'internal-rl[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help=f"{what} on the Ray cluster at ADDR (e.g. auto, or host:6379)")
    p.add_argument("--workers", type=int, help="Ray workers to use (default: one per CPU of the Ray cluster)")


def _output_folder(text: str) -> Path:
    """--out as a folder that can be written: an existing folder, or a new one under a writable folder.

    Checked before any work starts, by writing a probe file where the folder will go, so that a bad path is
    named as the user gave it rather than as a temporary folder deep in a save."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {text} is a file; expected a folder (new or existing)")
    parent = path if path.exists() else next((a for a in path.absolute().parents if a.exists()), Path("/"))
    if not parent.is_dir():
        raise ConfigError(f"--out {text}: {parent} is a file, so no folder can be made there")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ConfigError(f"--out {text}: cannot write in {parent} ({err.strerror or err})") from None
    return path


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    """One overwrite policy for every command: results already written are replaced only with --force."""
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
                          "pass --force to overwrite")


def _add_force_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"overwrite {what} written earlier (refused otherwise)")


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where to train: auto (default: a CUDA GPU if PyTorch sees one, else the CPU), cpu, cuda or cuda:N")


def _generate(args: argparse.Namespace) -> None:
    from internal_rl.data.generate import generate_dataset, map_chunks_locally
    from internal_rl.envs.tasks import parse_task

    tasks = [parse_task(task) for task in args.tasks] if args.tasks else None
    map_chunks = map_chunks_locally
    if _on_ray(args):
        from internal_rl.distributed.generate import ray_map_chunks

        map_chunks = ray_map_chunks(args.workers)
    path = generate_dataset(
        args.env, episodes=args.episodes, out=_output_folder(args.out), seed=args.seed, force=args.force,
        epsilon=args.epsilon, tasks=tasks, map_chunks=map_chunks, mean_actions=args.mean_actions,
    )
    print(f"wrote {args.episodes} {args.env} expert episodes to {path}")


def _pretrain(args: argparse.Namespace) -> None:
    from internal_rl.data.dataset import read_manifest
    from internal_rl.envs.registry import ENVS
    from internal_rl.models.pretraining import pretrain_preset
    from internal_rl.pipeline.pretrain_stage import run_pretraining
    from internal_rl.pipeline.run_folder import PRETRAIN, RunFolder

    config = pretrain_preset(args.preset, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    run = RunFolder(_output_folder(args.out))
    stage = run.pretrain
    if args.resume and not run.checkpoint(PRETRAIN).is_dir():
        raise ConfigError(f"--resume: {stage} has no checkpoint to continue; drop --resume to start a new run there")
    env = read_manifest(args.data).get("env", "gridworld")
    if env not in ENVS:  # every later stage needs the env (rollouts, RL): refuse it here, not two stages on
        raise ConfigError(f"{args.data}/manifest.json names env {env!r}, which is not registered; known: "
                          f"{', '.join(ENVS)} (register a new env in internal_rl/envs/registry.py)")
    grid_model = config.model.action_head == "categorical"  # grid actions are discrete, pinpad forces continuous
    if grid_model != (env == "gridworld"):
        fits = "quick or paper" if env == "gridworld" else "quick-pinpad or paper-ant"
        raise ConfigError(f"--preset {args.preset} builds a {'grid-world' if grid_model else 'pinpad'} "
                          f"model, but {args.data} holds {env} data; use --preset {fits}")
    result = run_pretraining(config, Path(args.data), run.root, resume=args.resume, device=args.device)
    held_out = result["held_out"]
    print(f"pretrained base model in {stage}: held-out action accuracy {held_out['action_accuracy']:.3f}, "
          f"NLL {held_out['action_nll']:.3f}; evaluation in {run.pretrain_eval}")


def _rl(args: argparse.Namespace) -> None:
    from internal_rl.envs.tasks import parse_task
    from internal_rl.common.config import load_json
    from internal_rl.pipeline.rl_stage import run_rl_seeds
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.rl.training import rl_config

    # A bad preset or override, or results that would be overwritten or mixed, fail before Ray starts or any
    # model loads.
    rl_config(args.preset, args.method, episodes=args.episodes, lr=args.lr, batch=args.batch)
    run = RunFolder(args.run)
    task = parse_task(args.task) if args.task is not None else run.posttrain_task()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    ours = [run.rl_result(args.method, seed) for seed in seeds]
    if args.resume and args.force:
        raise ConfigError("--resume continues unfinished runs and keeps finished ones; --force starts over: pick one")
    _refuse_overwrite(ours, args.force or args.resume)
    if args.force:
        for seed in seeds:
            shutil.rmtree(run.rl_checkpoint(args.method, seed), ignore_errors=True)
    for other in sorted(set(ours[0].parent.glob("seed_*.json")) - set(ours)):
        other_task = tuple(load_json(other).get("task") or ())
        if other_task and other_task != tuple(task):
            raise ConfigError(f"{other} is on task {'-'.join(map(str, other_task))}, not {'-'.join(map(str, task))}: "
                              "one method's seeds must share a task; use another run folder for another task")
    workers = None
    if _on_ray(args):
        from internal_rl.distributed.rollouts import RayRolloutWorkers

        workers = RayRolloutWorkers(args.workers)
    results = run_rl_seeds(
        args.method,
        run.root,
        task,
        args.seeds,
        args.preset,
        episodes=args.episodes,
        lr=args.lr,
        batch=args.batch,
        first_seed=args.first_seed,
        workers=workers,
        device=args.device,
        resume=args.resume,
    )
    for r in results:
        print(
            f"rl {r['method']} seed {r['seed']}: {r['episodes']} episodes, {r['env_steps']} env steps, "
            f"held-out success {r['initial_eval']['success_rate']:.3f} -> {r['final_eval']['success_rate']:.3f}"
        )


def _probe(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.pipeline.run_steps import probe_run

    run = RunFolder(args.run)
    _refuse_overwrite([run.probes], args.force)
    data = Path(args.data) if args.data else None
    results = probe_run(run.root, args.preset, data=data, seed=args.seed, steps=args.steps)
    layers = " ".join(f"{r['layer']}:{r['accuracy']:.2f}" for r in results["layers"])
    print(f"probe accuracy by layer {layers} (majority {results['majority_baseline']:.2f}); "
          f"best layer {results['best_layer']}; wrote {run.probes} and {run.probes_plot}")


def _steer(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.pipeline.run_steps import steer_run

    run = RunFolder(args.run)
    _refuse_overwrite([run.steering], args.force)
    data = Path(args.data) if args.data else None
    results = steer_run(run.root, args.preset, data=data, layers=args.layers, seed=args.seed, steps=args.steps,
                        episodes=args.episodes, device=args.device)
    rows = " ".join(f"{r['layer'] if r['layer'] is not None else r['hook']}:{r['single']['success']:.2f}/"
                    f"{r['chained_posttrain']['success']:.2f}" for r in results["layers"])
    print(f"success single/chained(post-training) by layer {rows}; best layer {results['best_layer']}; "
          f"wrote {run.steering} and {run.steering_plot}")


def _metacontroller(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.metacontroller_stage import train_metacontroller_run

    rank = {"rank": args.rank} if "rank" in args else {}  # absent: the library's default rank
    summary = train_metacontroller_run(
        Path(args.run), preset_name=args.preset, data=args.data, alpha=args.alpha, steps=args.steps, seed=args.seed,
        force_switch=args.force_switch, label_switches=args.label_switches, resume=args.resume, stage_name=args.stage,
        device=args.device, cotrain=args.cotrain, compile_baseline=args.compile, **rank,
    )
    final = summary["final"]
    print(f"trained metacontroller in {summary['stage']} ({summary['train_seconds']:.0f} s): held-out action NLL "
          f"{final['heldout_nll']:.3f}, KL {final['heldout_kl']:.3f}, {final['heldout_switches_per_episode']:.2f} "
          f"switches per episode")


def _analyse(args: argparse.Namespace) -> None:
    """`analyse`: the switching analysis; its older --code-replay and --alpha-sweep flags run those commands."""
    if args.code_replay is not None:
        args.task = args.code_replay
        return _code_replay(args)
    if args.alpha_sweep is not None:
        args.alphas = args.alpha_sweep
        return _alpha_sweep(args)
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.pipeline.run_steps import analyse_run

    run = RunFolder(args.run)
    _refuse_overwrite([run.switching(args.stage)], args.force)
    report = analyse_run(run.root, stage_name=args.stage, data=args.data, max_episodes=args.episodes)
    sw, seg, true = report["subgoal_switches"], report["segment_length"], report["true_subgoal_length"]
    print(f"switch F1 {sw['f1']:.3f} (precision {sw['precision']:.3f}, recall {sw['recall']:.3f}); "
          f"NMI(z, subgoal) step {report['nmi']['step']:.3f}, segment {report['nmi']['segment']:.3f}; "
          f"mean segment length {seg['mean']:.2f} vs true {true['mean']:.2f}; wrote {report['json']} and {report['plot']}")


def _label_free(args: argparse.Namespace) -> None:
    from internal_rl.analysis.label_free_codes import LabelFreeConfig
    from internal_rl.pipeline.label_free_stage import discover_codes_run, fit_switch_run
    from internal_rl.pipeline.run_folder import HMM_SWITCH_DIR, LABEL_FREE_DIR, RunFolder

    run = RunFolder(args.run)
    _refuse_overwrite([run.stage(HMM_SWITCH_DIR), run.stage(LABEL_FREE_DIR)], args.force)
    config = LabelFreeConfig(n_codes=args.codes, seed=args.seed)
    held_out = fit_switch_run(run.root, config)["held_out"]
    codes = discover_codes_run(run.root, config)
    print(f"HMM switch: {held_out['switches_per_episode']:.1f} switches per held-out episode (true "
          f"{held_out['true_switches_per_episode']:.1f}), recall {held_out['switches']['recall']:.3f}, precision "
          f"{held_out['switches']['precision']:.3f}; {config.n_codes} codes on {codes['segments_per_episode']:.1f} "
          f"segments per episode; next: internal-rl rl --run {run.root} --method label-free")


def _code_replay(args: argparse.Namespace) -> None:
    from internal_rl.envs.tasks import parse_task
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.pipeline.run_steps import replay_run

    run = RunFolder(args.run)
    _refuse_overwrite([run.code_replay(args.stage)], args.force)
    result = replay_run(run.root, parse_task(args.task), stage_name=args.stage, episodes=args.episodes)
    success = {key: result[key]["success"] for key in ("demonstration", "residual_linear", "mean_code", "prior")}
    print(f"task {args.task}, {result['solvable_layouts']} layouts the expert solves; success with codes "
          f"inferred from the demonstrations {success['demonstration']:.3f}, predicted linearly from the residual "
          f"{success['residual_linear']:.3f}, the mean code per decision {success['mean_code']:.3f}, from the "
          f"prior {success['prior']:.3f}")


def _alpha_sweep(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.run_folder import RunFolder
    from internal_rl.pipeline.run_steps import alpha_sweep

    run = RunFolder(args.run)
    _refuse_overwrite([run.alpha_sweep], args.force)
    result = alpha_sweep(run.root, args.alphas, preset_name=args.preset, data=args.data, steps=args.steps,
                         max_episodes=args.episodes, device=args.device)
    for row in result["rows"]:
        print(f"alpha {row['alpha']:g}: NLL {row['action_nll']:.3f}, {row['switches_per_episode']:.2f} switches "
              f"per episode (true {row['true_subgoals_per_episode']:.2f}), F1 {row['f1']:.2f}")
    print(f"wrote {run.alpha_sweep} and {result['plot']}")


def _controller_rank(text: str) -> int | None:
    """--rank: a positive integer, or 'full' (None: a full-rank controller U)."""
    if text == "full":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}")
    return int(text)


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= `minimum`, refused with `expected` in the message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}; expected {expected}")
        return value

    return parse


_seed = _int_at_least(0, "a seed, an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")
_threads = _int_at_least(1, "a positive number of threads, e.g. 1")


def _probability(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}; expected a probability in [0, 1]")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}; expected a finite number")
    return value


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, e.g. 0,0.05,0.1; got {text!r}")
    return values


def _reproduce(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.reproduce import reproduce

    report = reproduce(args.env, _output_folder(args.out), args.preset, device=args.device)
    print(f"report written to {report} (numbers in {report.parent / 'results.json'})")


def _sweep(args: argparse.Namespace) -> None:
    from internal_rl.distributed.sweep import run_sweep
    from internal_rl.pipeline.sweep import load_sweep_config

    report = run_sweep(load_sweep_config(Path(args.config)), address=args.ray_address)
    print(f"sweep report written to {report}")


def _report(args: argparse.Namespace) -> None:
    from internal_rl.pipeline.report import write_report

    print(f"report written to {write_report(Path(args.run))}")


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line (exit status 2), like every other refusal of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # `--flag=--` reaches here as the lone string '--', which argparse drops, handing the option an empty
        # list instead of calling its type: refuse it as the bad value it is.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {action.option_strings[0]}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="internal-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=_threads, default=None,
                        help="torch intra-op threads on the CPU (default: torch's, one per core). On 2 idle cores two "
                             "threads pretrain 1.7x faster than one, but beside one busy process they run 3.6x slower "
                             "while one thread does not slow down: use --threads 1 on a shared machine "
                             "(benchmarks/bench_load.py)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write expert trajectories to a dataset folder")
    p.add_argument("env", choices=["gridworld", "point-pinpad", "ant-pinpad"], help="which environment's expert to roll out")
    p.add_argument("--episodes", type=_positive_int, required=True, help="number of successful episodes to keep")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing dataset")
    p.add_argument("--epsilon", type=_probability, default=0.0, help="expert's random-action probability (paper: 0)")
    p.add_argument(
        "--tasks", nargs="+", metavar="TASK", help="tasks to sample from, e.g. 0-1-2-3 (default: pretraining tasks)"
    )
    p.add_argument("--mean-actions", action="store_true",
                   help="record the expert's noiseless actions, the paper's cleaner data D*: the mean of the pinpad "
                        "experts' Gaussian; for the grid world, the first shortest-path action in a fixed order")
    _add_ray_options(p, "roll the expert out")
    p.set_defaults(func=_generate)

    p = sub.add_parser("pretrain", help="pretrain the base model on a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder (from `internal-rl generate`)")
    p.add_argument("--out", required=True, help="run folder; the model goes to OUT/pretrain")
    p.add_argument("--preset", default="quick", help="hyperparameter preset: quick (grid world, about 30 min on one CPU core), quick-offsets (quick plus each object's offset from the agent in the input, a diagnostic), quick-offsets-w256 (the same at the paper's width), quick-pinpad, paper or paper-ant")
    p.add_argument("--steps", type=_positive_int, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=_positive_int, help="episodes per step (default: the preset's)")
    p.add_argument("--seed", type=_seed, help="training seed (default: the preset's, 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT/pretrain")
    _add_device_option(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("rl", help="RL on a post-training task: internal RL, raw-action RL, the no-switch ablation, "
                                  "or through the co-trained or CompILE segmenter")
    p.add_argument("--run", required=True, help="run folder (pretrain/, metacontroller/, metacontroller-no-switch/)")
    p.add_argument("--method", required=True, choices=["internal", "raw", "no-switch", "cotrained", "compile", "label-free"],
                   help="cotrained: internal RL through a metacontroller trained with `metacontroller --cotrain`; "
                        "compile: through the CompILE baseline (`metacontroller --compile`); label-free: through "
                        "the codes and HMM switch of `reproduce --preset stepping-stone` (a deviation)")
    p.add_argument("--task", default=None, help="colours to visit in order (default: the run's environment's post-training task)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="number of seeds, run one after another")
    p.add_argument("--first-seed", type=_seed, default=0)
    p.add_argument("--preset", default="quick",
                   help="RL preset, a name in rl.training.PRESETS (default: quick); a bad one is refused with the list")
    p.add_argument("--episodes", type=_positive_int, default=None, help="episode budget (overrides the preset)")
    p.add_argument("--lr", type=_finite_float, default=None, help="learning rate (overrides the preset)")
    p.add_argument("--batch", type=_positive_int, default=None, help="episodes per PPO update (overrides the preset)")
    p.add_argument("--resume", action="store_true",
                   help="continue the seeds' unfinished runs (RUN/rl/<method>/checkpoint_seed_<k>/, written every 8 "
                        "updates) and keep their finished results; the budget may be raised, nothing else changed")
    _add_force_option(p, "the seeds' results (and unfinished runs)")
    _add_ray_options(p, "collect the episodes")
    _add_device_option(p)
    p.set_defaults(func=_rl)

    p = sub.add_parser("probe", help="linear probes for the current subgoal at every hook of RUN's base model")
    p.add_argument("--run", required=True, help="run folder with a pretrained base model (RUN/pretrain)")
    p.add_argument("--data", help="dataset folder (default: the one RUN's base model was trained on)")
    p.add_argument("--preset", default="quick", help="probe preset: quick (< 1 min on CPU) or paper")
    p.add_argument("--steps", type=_positive_int, help="probe optimiser steps (default: the preset's)")
    p.add_argument("--seed", type=_seed, help="seed of the episode split and the probes (default: 0)")
    _add_force_option(p, "RUN/probes.json")
    p.set_defaults(func=_probe)

    p = sub.add_parser("steer", help="fit and roll out supervised subgoal controllers per layer of RUN's base model")
    p.add_argument("--run", required=True, help="run folder with a pretrained base model (RUN/pretrain)")
    p.add_argument("--data", help="dataset folder (default: the one RUN's base model was trained on)")
    p.add_argument("--layers", nargs="+", metavar="LAYER",
                   help="residual layers 0..L or hook names (default: 1..L-1, the block outputs inside the trunk)")
    p.add_argument("--preset", default="quick", help="preset: quick (about 2 min on CPU) or paper")
    p.add_argument("--steps", type=_positive_int, help="controller training steps per layer (default: the preset's)")
    p.add_argument("--episodes", type=_positive_int, help="rollout episodes per evaluation (default: the preset's)")
    p.add_argument("--seed", type=_seed, help="seed (default: 0)")
    _add_force_option(p, "RUN/steering.json and its controllers")
    _add_device_option(p)
    p.set_defaults(func=_steer)

    p = sub.add_parser("metacontroller", help="train the metacontroller on RUN's frozen base model")
    p.add_argument("--run", required=True, help="run folder with a pretrained base model (RUN/pretrain)")
    p.add_argument("--data", help="dataset folder (default: the one RUN's base model was trained on)")
    p.add_argument("--preset", default="quick", help="preset: quick (600 steps, a few minutes on CPU), long (1,600 steps, the demo's, about 8 min), quick-pinpad, paper (Table A9) or paper-ant (Table A10)")
    p.add_argument("--alpha", type=_finite_float, help="KL strength alpha (default: the config's)")
    p.add_argument("--steps", type=_positive_int, help="training steps (default: the preset's)")
    p.add_argument("--seed", type=_seed, help="seed (default: 0)")
    p.add_argument("--force-switch", action="store_true",
                   help="the no-temporal-abstraction ablation (beta == 1); goes to RUN/metacontroller-no-switch")
    p.add_argument("--label-switches", action="store_true",
                   help="diagnostic: beta = 1 exactly where the true subgoal changes, to measure the loss subgoal-aligned "
                        "switching reaches; goes to RUN/metacontroller-label-switches (not usable for RL)")
    p.add_argument("--rank", type=_controller_rank, default=argparse.SUPPRESS, metavar="N|full",
                   help="rank of the controller U = A B^T, or full for a full d x d matrix (default: the config's, 16)")
    p.add_argument("--cotrain", choices=["scratch", "pretrained"],
                   help="the co-training baseline: train a base model jointly on the same loss, from random weights "
                        "(the paper's grid world) or from RUN's pretrained ones (its ant); goes to "
                        "RUN/metacontroller-cotrained, with that base model in its base_model/")
    p.add_argument("--compile", action="store_true",
                   help="the CompILE baseline (Kipf et al., 2019) in place of the metacontroller: at most 4 segments "
                        "with a Poisson length prior, trained on the same loop; goes to RUN/compile")
    p.add_argument("--stage", help="stage folder name inside RUN (default: metacontroller[-no-switch|-cotrained], compile)")
    p.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    _add_device_option(p)
    p.set_defaults(func=_metacontroller)

    p = sub.add_parser("analyse", help="switching analysis of RUN's metacontroller (F1, NMI, segment lengths)")
    p.add_argument("--run", required=True, help="run folder with a trained metacontroller")
    p.add_argument("--stage", default="metacontroller", help="metacontroller stage folder inside RUN")
    p.add_argument("--data", help="dataset folder (default: the one the metacontroller was trained on)")
    p.add_argument("--episodes", type=_positive_int, default=1000, help="held-out episodes to analyse (or layouts to replay)")
    p.add_argument("--code-replay", metavar="TASK", help="the older spelling of `code-replay --task TASK`")
    p.add_argument("--alpha-sweep", type=_float_list, metavar="A,B,...", help="the older spelling of `alpha-sweep --alphas A,B,...`")
    p.add_argument("--preset", default="quick", help="training preset for --alpha-sweep")
    p.add_argument("--steps", type=_positive_int, help="training steps per alpha for --alpha-sweep (default: the preset's)")
    _add_force_option(p, "the analysis's results")
    _add_device_option(p)  # where --alpha-sweep trains; the analyses run on the CPU
    p.set_defaults(func=_analyse)

    p = sub.add_parser("label-free", help="fit the label-free chain on RUN's D*: an HMM switch over the residual "
                                          "and k-means codes with their controllers (a deviation; for --method label-free)")
    p.add_argument("--run", required=True, help="run folder with a pretrained base model and RUN/data-clean (D*)")
    p.add_argument("--codes", type=_positive_int, default=8, help="number of codes (k-means clusters; default 8)")
    p.add_argument("--seed", type=_seed, default=0)
    _add_force_option(p, "RUN/hmm-switch and RUN/label-free-codes")
    p.set_defaults(func=_label_free)

    p = sub.add_parser("code-replay", help="grid world: replay the codes RUN's metacontroller infers from expert "
                                           "demonstrations of TASK in the internal-RL env, against codes from the prior")
    p.add_argument("--run", required=True, help="run folder with a trained metacontroller")
    p.add_argument("--task", required=True, help="the task whose demonstrations are replayed, e.g. 0-1-2-3")
    p.add_argument("--stage", default="metacontroller", help="metacontroller stage folder inside RUN")
    p.add_argument("--episodes", type=_positive_int, default=1000, help="layouts to replay")
    _add_force_option(p, "RUN/code_replay.json")
    p.set_defaults(func=_code_replay)

    p = sub.add_parser("alpha-sweep", help="train one metacontroller per alpha (RUN/alpha_sweep/) and plot NLL vs switches")
    p.add_argument("--run", required=True, help="run folder with a pretrained base model (RUN/pretrain)")
    p.add_argument("--alphas", required=True, type=_float_list, metavar="A,B,...", help="KL strengths, e.g. 0,0.05,0.1")
    p.add_argument("--data", help="dataset folder (default: the one RUN's base model was trained on)")
    p.add_argument("--preset", default="quick", help="training preset")
    p.add_argument("--steps", type=_positive_int, help="training steps per alpha (default: the preset's)")
    p.add_argument("--episodes", type=_positive_int, default=1000, help="held-out episodes each analysis reads")
    _add_force_option(p, "RUN/alpha_sweep.json")
    _add_device_option(p)
    p.set_defaults(func=_alpha_sweep)

    p = sub.add_parser("reproduce", help="run the whole pipeline (resumable), ending in DIR/report.md")
    p.add_argument("env", choices=["gridworld", "point-pinpad", "ant-pinpad"])
    p.add_argument("--out", required=True, help="run folder (an existing one is continued)")
    p.add_argument("--preset", default="quick", help="quick (2 CPU cores: grid ~50 min, point-pinpad ~18 min, ant-pinpad ~28 min), demo (grid: quick from "
                        "its shipped base model and metacontrollers, minutes), long (grid, ~95 min), stepping-stone "
                        "(grid: internal RL over codes and a switch found without labels against raw-action RL on "
                        "0-1-2-3-4-5, ~7 h) or full (the paper's budgets)")
    _add_device_option(p)
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("report", help="rebuild RUN/report.md and RUN/results.json from a run folder's results")
    p.add_argument("--run", required=True)
    p.set_defaults(func=_report)

    p = sub.add_parser("sweep", help="RL methods x seeds x tasks (x hyperparameters) as Ray Tune trials, resumable")
    p.add_argument("config", help="sweep file (JSON; see internal_rl/pipeline/sweep.py and examples/sweep.json)")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to run on (default: a local Ray instance)")
    p.set_defaults(func=_sweep)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from internal_rl.common.device import set_cpu_threads  # after parsing, so that --help needs no torch

    if args.threads is not None:
        set_cpu_threads(args.threads)
    try:
        args.func(args)
    except InternalRLError as err:
        print(f"internal-rl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the system refused (not writable, not a folder, a full disk): name it
        where = f" {err.filename}" if err.filename else ""
        print(f"internal-rl {args.command}: error: cannot use{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"internal-rl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
