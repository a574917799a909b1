"""Train any stage from YAML, the way latent-diffusion users expect, on pytorch-lightning 2.x.

    python main.py --base configs/first-stage/ct-tiny.yaml -t
    python main.py --base configs/latent-diffusion/ct256-f4.yaml -t --gpus 0, --scale_lr False
        model.params.first_stage_config.params.ckpt_path=logs/<stage1>/checkpoints/last.ckpt  (one line)
    python main.py -r logs/<run>            # continue: saved config, global step, optimizer, EMA
    python main.py --base configs/first-stage/ct-tiny.yaml -t --num_processes 2   # DDP on the CPU (gloo)
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.config import load_config as load_config_file
from ldm.util import ConfigError, file_sha256, run_record, write_json_atomic, write_text_atomic


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got '{value}'")


BOOL_WORDS = {"yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"}


def normalise_switches(argv: list[str]) -> list[str]:
    """Accept latent-diffusion's '-t True' / '--no-test False' while a bare '-t' still works.

    argparse's optional-value flags would swallow a following 'key=value' override instead.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ("-t", "--train", "--no-test") and nxt is not None and nxt.lower() in BOOL_WORDS:
            if str2bool(nxt):
                out.append(arg)
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--base", nargs="*", metavar="config.yaml", default=[],
                        help="config files merged left to right; trailing key.path=value arguments override them")
    parser.add_argument("-t", "--train", action="store_true", help="train (also accepts '-t True')")
    parser.add_argument("--no-test", action="store_true",
                        help="accepted for latent-diffusion compatibility; testing is eval_sr.py's job")
    parser.add_argument("-n", "--name", default="", help="run name (default: the last config's file name)")
    parser.add_argument("-r", "--resume", default="", help="a log dir or a checkpoint in one to continue")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for everything")
    parser.add_argument("-l", "--logdir", default="logs", help="where run folders are made")
    parser.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                        help="lr = accumulate x devices x nodes x batch x base_learning_rate")
    parser.add_argument("--gpus", default=None, help="'0,' or '0,1' (omitted: CPU); several GPUs use DDP")
    parser.add_argument("--num_processes", type=int, default=1,
                        help="without --gpus: CPU processes trained with DDP over gloo (latent-diffusion's name)")
    parser.add_argument("--num_nodes", type=int, default=1, help="machines for multi-node DDP")
    parser.add_argument("--precision", default=None, help="32, bf16-mixed or 16-mixed (default: config or 32)")
    return parser


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse_gpus(gpus: str | None) -> list[int] | None:
    if gpus is None or not str(gpus).strip(" ,"):
        return None
    try:
        return [int(g) for g in str(gpus).split(",") if g.strip()]
    except ValueError:
        fail(f"--gpus: expected a comma-separated list like '0,' or '0,1', got '{gpus}'")
        raise


def resolve_resume(resume: str) -> tuple[Path, Path]:
    """-r accepts the run folder or a checkpoint inside it; returns (logdir, checkpoint)."""
    path = Path(resume)
    if not path.exists():
        fail(f"-r/--resume: {path} does not exist")
    if path.is_file():
        logdir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return logdir, path
    ckpt = path / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        fail(f"-r/--resume: {ckpt} not found (the run saved no checkpoint)")
    return path, ckpt


def load_config(base: list[str], dotlist: list[str]) -> DictConfig:
    configs = []
    for name in base:
        if not Path(name).is_file():
            fail(f"--base: config file {name} not found")
        try:  # with the files it inherits and the stage-1 configs it names (ldm.config)
            configs.append(load_config_file(name))
        except ConfigError as err:
            fail(str(err))
    bad = [item for item in dotlist if "=" not in item]
    if bad:
        fail(f"unrecognised argument '{bad[0]}' (overrides are key.path=value)")
    try:
        config = OmegaConf.merge(*configs, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as err:
        fail(f"config merge failed: {str(err).splitlines()[0]}")
    for section in ("model", "data"):
        if section not in config or not isinstance(config[section], DictConfig):
            fail(f"{section}: missing section in the merged config ({', '.join(base) or 'no --base'})")
    return config


def _finish_step_then_stop(signum: int, frame: object) -> None:
    """Ctrl-C: let the running step finish and save last.ckpt, as on SIGTERM (an interrupt in the
    middle of an optimizer step would checkpoint a half-updated state). A second Ctrl-C aborts."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("\nCtrl-C: finishing this step, then saving last.ckpt (Ctrl-C again aborts at once)",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


# Lightning's DDP launcher starts ranks 1.. by re-running this script with LOCAL_RANK set; they
# inherit the environment, so rank 0 hands them its log dir (their clock may be a second later,
# or see rank 0's folder and pick a "-2" suffix).
LOGDIR_ENV = "LDM_MAIN_LOGDIR"


def make_logdir(opt: argparse.Namespace, now: str) -> Path:
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(LOGDIR_ENV):
        return Path(os.environ[LOGDIR_ENV])
    name = opt.name or (Path(opt.base[-1]).stem if opt.base else "run")
    logdir = Path(opt.logdir) / f"{now}_{name}"
    suffix = 1
    while logdir.exists():  # two runs started in the same second
        suffix += 1
        logdir = Path(opt.logdir) / f"{now}_{name}-{suffix}"
    return logdir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opt, dotlist = get_parser().parse_known_args(normalise_switches(argv))
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    ckpt_path = None
    if opt.resume:
        logdir, ckpt_path = resolve_resume(opt.resume)
        project = sorted((logdir / "configs").glob("*-project.yaml"))
        lightning = sorted((logdir / "configs").glob("*-lightning.yaml"))
        if not project:
            fail(f"-r/--resume: {logdir}/configs holds no config snapshot")
        opt.base = [str(project[-1]), *[str(p) for p in lightning[-1:]], *opt.base]
    elif not opt.base:
        fail("--base: give at least one config file (or -r to resume a run)")
    gpus = parse_gpus(opt.gpus)
    if opt.num_processes < 1 or (gpus and opt.num_processes > 1):
        fail(f"--num_processes {opt.num_processes}: give 1 or more, and only without --gpus "
             "(--gpus 0,1 already runs one process per GPU)")
    config = load_config(opt.base, dotlist)
    lightning_config = config.pop("lightning", OmegaConf.create())

    # Heavy imports after the argument checks so that usage errors answer at once.
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from ldm.callbacks import (
        AtomicCheckpointIO,
        CheckpointOnExit,
        FiniteLossGuard,
        RNGStateCheckpoint,
        resume_command,
    )
    from ldm.util import instantiate_from_config

    # The LDM's first stage is frozen in eval mode on purpose; Lightning warns about any such module.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    pl.seed_everything(opt.seed, workers=True)
    try:
        model = instantiate_from_config(config.model, key="model")
        data = instantiate_from_config(config.data, key="data")
        callbacks = [
            instantiate_from_config(node, key=f"lightning.callbacks.{name}")
            for name, node in (lightning_config.get("callbacks") or {}).items()
        ]
    except (ConfigError, TypeError, ValueError, FileNotFoundError, RuntimeError) as err:
        fail(str(err).splitlines()[0])
        raise

    if not opt.resume:
        logdir = make_logdir(opt, now)
        os.environ[LOGDIR_ENV] = str(logdir)
    ckpt_dir = logdir / "checkpoints"
    trainer_kwargs = OmegaConf.to_container(lightning_config.get("trainer") or OmegaConf.create(), resolve=True)
    n_devices = len(gpus) if gpus else opt.num_processes
    trainer_kwargs.update(
        accelerator="gpu" if gpus else "cpu",
        devices=gpus or opt.num_processes,
        num_nodes=opt.num_nodes,
        default_root_dir=str(logdir),
        use_distributed_sampler=False,  # the data module's SeededSampler shards by rank itself
    )
    if n_devices > 1 or opt.num_nodes > 1:
        trainer_kwargs.setdefault("strategy", "ddp")
    if opt.precision is not None:
        trainer_kwargs["precision"] = opt.precision

    # Learning rate, latent-diffusion style.
    batch_size = int(config.data.get("params", {}).get("batch_size", 1))
    base_lr = float(config.model.get("base_learning_rate", getattr(model, "learning_rate", 1e-4)))
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", 1))
    if opt.scale_lr:
        model.learning_rate = accumulate * n_devices * opt.num_nodes * batch_size * base_lr
        print(f"learning rate {model.learning_rate:.2e} = {accumulate} (accumulate) x {n_devices} (devices) x "
              f"{opt.num_nodes} (nodes) x {batch_size} (batch) x {base_lr:.2e} (base)")
    else:
        model.learning_rate = base_lr
        print(f"learning rate {model.learning_rate:.2e} (--scale_lr False)")

    monitor = getattr(model, "monitor", None)
    checkpoint_kwargs = dict(dirpath=str(ckpt_dir), filename="{epoch:06}-{step:09}", save_last=False,
                             auto_insert_metric_name=False)
    if monitor:
        checkpoint_kwargs.update(monitor=monitor, save_top_k=3, mode="min" if "loss" in monitor else "max",
                                 filename="best-{step:09}")
    else:
        checkpoint_kwargs.update(save_top_k=0)
    user_checkpoint = OmegaConf.select(lightning_config, "modelcheckpoint.params", default=None)
    if user_checkpoint is not None:
        checkpoint_kwargs.update(OmegaConf.to_container(user_checkpoint, resolve=True))
    every = int(lightning_config.get("checkpoint_every_n_steps", 500))
    last_kwargs = dict(dirpath=str(ckpt_dir), filename="last", every_n_train_steps=every, save_top_k=1,
                       enable_version_counter=False)
    hint = resume_command(logdir, argv)
    callbacks += [
        FiniteLossGuard(),
        RNGStateCheckpoint(),
        CheckpointOnExit(ckpt_dir, hint),
        ModelCheckpoint(**checkpoint_kwargs),
        ModelCheckpoint(**last_kwargs),
        LearningRateMonitor(logging_interval="step"),
    ]
    loggers = [
        CSVLogger(save_dir=str(logdir), name="", version="csv"),
        TensorBoardLogger(save_dir=str(logdir), name="", version="tensorboard"),
    ]
    trainer = pl.Trainer(**trainer_kwargs, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    trainer._ldm_logdir = str(logdir)

    if trainer.is_global_zero:
        (logdir / "configs").mkdir(parents=True, exist_ok=True)
        write_text_atomic(logdir / "configs" / f"{now}-project.yaml", OmegaConf.to_yaml(config))
        write_text_atomic(logdir / "configs" / f"{now}-lightning.yaml",
                          OmegaConf.to_yaml(OmegaConf.create({"lightning": lightning_config})))
        write_json_atomic(logdir / "configs" / f"{now}-run.json", run_record(
            "main.py", argv, seed=opt.seed, config_sha256=file_sha256(logdir / "configs" / f"{now}-project.yaml"),
            resumed_from=str(ckpt_path) if ckpt_path else None,
            resumed_from_sha256=file_sha256(ckpt_path) if ckpt_path else None))
        print(f"log dir: {logdir}")

    if not opt.train:
        print("nothing to do: pass -t to train (evaluation is eval_sr.py)")
        return 0
    signal.signal(signal.SIGINT, _finish_step_then_stop)
    try:
        trainer.fit(model, data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SystemExit as stop:  # SIGTERM, after last.ckpt was written
        print(f"stopped; log dir: {logdir}", file=sys.stderr)
        return int(stop.code) if isinstance(stop.code, int) and stop.code else 143
    except Exception as err:
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
              f"  config: {', '.join(opt.base)}\n  log dir: {logdir}", file=sys.stderr)
        return 1
    if trainer.is_global_zero:
        print(f"done; checkpoint: {ckpt_dir / 'last.ckpt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
