"""A trained run, loaded back from the log dir main.py wrote: model, config and what identifies them.

    logs/<YYYY-MM-DDTHH-MM-SS>_<name>/
        configs/<ts>-project.yaml    merged `model` + `data` config (one per start or resume)
        checkpoints/last.ckpt        Lightning checkpoint ("state_dict", "global_step", ...)

eval_sr.py, sr.py and the demo all start here, so every number they report names the exact
config and checkpoint (sha256) it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ldm.checkpoint import load_checkpoint, load_weights, state_dict_of
from ldm.config import load_config
from ldm.data.intensity import FULL_WINDOW, Window, check_window
from ldm.util import ConfigError, atomic_path, file_sha256, instantiate_from_config

KINDS = ("first_stage", "liif", "ldm")
EXPORT_SUFFIX = ".safetensors"
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}_")


class ExperimentError(ValueError):
    """A log dir cannot be loaded (missing, incomplete, or its model is not a super-resolver)."""


@dataclass
class Experiment:
    model: nn.Module
    config: DictConfig
    kind: str
    hu_window: Window
    ckpt_path: Path
    ckpt_sha256: str
    config_path: Path
    config_sha256: str
    logdir: Path
    global_step: int | None
    ema: bool  # whether EMA weights were copied into the model

    @property
    def name(self) -> str:
        """The run name without main.py's timestamp prefix (what tables call the method)."""
        return _TIMESTAMP.sub("", self.logdir.name) or self.logdir.name

    @property
    def data_params(self) -> dict[str, Any]:
        """The data module's params as plain values ({} when the config has no data section)."""
        node = OmegaConf.select(self.config, "data.params", default=None)
        return OmegaConf.to_container(node, resolve=True) if node is not None else {}

    def describe(self) -> dict[str, Any]:
        """Provenance for metrics files."""
        return {
            "exp": str(self.logdir),
            "kind": self.kind,
            "config": str(self.config_path),
            "config_sha256": self.config_sha256,
            "checkpoint": str(self.ckpt_path),
            "ckpt_sha256": self.ckpt_sha256,
            "global_step": self.global_step,
            "ema": self.ema,
            "hu_window": list(self.hu_window),
        }


def project_config_path(logdir: Path) -> Path:
    """The newest configs/*-project.yaml (a resumed run writes one per start; names sort by time)."""
    found = sorted((logdir / "configs").glob("*-project.yaml"))
    if not found:
        raise ExperimentError(f"{logdir}: no configs/*-project.yaml (not a log dir written by main.py?)")
    return found[-1]


def checkpoint_path(logdir: Path, ckpt: str | os.PathLike[str] | None) -> Path:
    """checkpoints/last.ckpt, or `ckpt` as given or relative to checkpoints/."""
    if ckpt is None:
        path = logdir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise ExperimentError(f"{logdir}: no checkpoints/last.ckpt (training saved no checkpoint yet)")
        return path
    for path in (Path(ckpt), logdir / "checkpoints" / ckpt):
        if path.is_file():
            return path
    raise ExperimentError(f"{ckpt}: checkpoint not found (nor under {logdir / 'checkpoints'})")


def _without_init_checkpoints(node: Any) -> Any:
    """Set every `ckpt_path` in the model config to None.

    An LDM config points at its first stage's checkpoint (and a model may name init weights);
    those files need not exist where the run is evaluated, and the run's own checkpoint already
    holds every weight, so the model is built without them and loaded in full afterwards.
    """
    if isinstance(node, dict):
        return {k: (None if k == "ckpt_path" else _without_init_checkpoints(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_init_checkpoints(v) for v in node]
    return node


def _raised_by_the_call(err: TypeError) -> bool:
    """Whether a TypeError comes from calling a class with params it does not take.

    Such an error is raised before the callee runs, so the innermost frame is the caller,
    instantiate_from_config (also for nested nodes like first_stage_config).
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is instantiate_from_config.__code__


def build_model(config: DictConfig, source: Path) -> nn.Module:
    if "model" not in config or not isinstance(config.model, DictConfig):
        raise ConfigError(f"{source}: model: missing section")
    model_config = _without_init_checkpoints(OmegaConf.to_container(config.model, resolve=True))
    try:
        return instantiate_from_config(model_config, key="model")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    except TypeError as err:
        if not _raised_by_the_call(err):  # a bug inside a model's code keeps its traceback
            raise
        raise ConfigError(f"{source}: model.params: {str(err).splitlines()[0]}") from err
    except ValueError as err:  # params the model refuses
        raise ConfigError(f"{source}: model.params: {str(err).splitlines()[0]}") from err


def _hu_window(config: DictConfig, source: Path) -> Window:
    window = OmegaConf.select(config, "data.params.hu_window", default=None)
    try:
        return check_window(tuple(window) if window is not None else FULL_WINDOW)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: data.params.{err}") from err


def _is_super_resolver(model: nn.Module, source: Path) -> str:
    kind = getattr(model, "kind", None)
    if kind not in KINDS or not callable(getattr(model, "super_resolve", None)):
        raise ExperimentError(
            f"{source}: model {type(model).__name__} is not a super-resolver "
            f"(needs super_resolve() and kind in {KINDS}, has kind {kind!r})"
        )
    return kind


def export_experiment(exp: Experiment, out: str | os.PathLike[str]) -> Path:
    """Write the loaded weights (EMA when chosen) and the config as one safetensors file.

    safetensors holds tensors and string metadata only: loading it can never run code, and no
    pickle is involved. The EMA shadows are left out; the weights in use are the ones shared.
    """
    from safetensors.torch import save_file

    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in exp.model.state_dict().items() if not k.startswith("ema.")}
    metadata = {
        "format": "ct-ldm-sr/1",
        "config": OmegaConf.to_yaml(exp.config),
        "kind": exp.kind,
        "ema": str(exp.ema),
        "global_step": str(exp.global_step),
        "source_checkpoint_sha256": exp.ckpt_sha256,
        "source_config_sha256": exp.config_sha256,
    }
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return out


def load_exported(path: Path, device: str | torch.device = "cpu") -> Experiment:
    """An exported .safetensors file as an Experiment (its config travels in the metadata)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ExperimentError(f"{path}: not a readable safetensors export ({err})") from err
    if "config" not in metadata:
        raise ExperimentError(f"{path}: safetensors file without the config metadata of ldm.export")
    config = OmegaConf.create(metadata["config"])
    model = build_model(config, path)
    kind = _is_super_resolver(model, path)
    load_weights(model, state, source=str(path), ignore_prefixes=("ema.",))
    model.ema = None
    model.eval().requires_grad_(False).to(device)
    step = metadata.get("global_step", "None")
    digest = file_sha256(path)
    return Experiment(
        model=model, config=config, kind=kind, hu_window=_hu_window(config, path),
        ckpt_path=path, ckpt_sha256=digest, config_path=path, config_sha256=digest, logdir=path,
        global_step=int(step) if step.isdigit() else None, ema=metadata.get("ema") == "True",
    )


def load_experiment(
    logdir: str | os.PathLike[str],
    ckpt: str | os.PathLike[str] | None = None,
    use_ema: bool = True,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
) -> Experiment:
    """Build the run's model from its config snapshot and load its checkpoint (EMA weights by default).

    Errors are one line naming the file: ExperimentError (missing pieces, not a super-resolver),
    ConfigError (bad config, target that does not import), CheckpointMismatchError,
    UnsafeCheckpointError (pickled checkpoint without trust_checkpoint).
    """
    logdir = Path(logdir)
    if logdir.suffix == EXPORT_SUFFIX and logdir.is_file():
        return load_exported(logdir, device)
    if not logdir.is_dir():
        raise ExperimentError(f"{logdir}: log dir not found")
    config_path = project_config_path(logdir)
    ckpt_path = checkpoint_path(logdir, ckpt)
    config = load_config(config_path)  # ConfigError naming the file when it is not a YAML mapping

    model = build_model(config, config_path)
    kind = _is_super_resolver(model, config_path)
    checkpoint = load_checkpoint(ckpt_path, trust=trust_checkpoint)
    load_weights(model, state_dict_of(checkpoint), source=str(ckpt_path))
    has_ema = getattr(model, "ema", None) is not None
    if has_ema:
        if use_ema:
            model.use_ema_weights()
        # A model samples inside its ema_scope(); without the EMA module that scope is a no-op, so
        # the weights chosen here (EMA or trained, per use_ema) are the ones that run, and no
        # per-call weight swap costs time or memory.
        model.ema = None
    model.eval().requires_grad_(False).to(device)
    hu_window = _hu_window(config, config_path)
    step = checkpoint.get("global_step")
    return Experiment(
        model=model,
        config=config,
        kind=kind,
        hu_window=hu_window,
        ckpt_path=ckpt_path,
        ckpt_sha256=file_sha256(ckpt_path),
        config_path=config_path,
        config_sha256=file_sha256(config_path),
        logdir=logdir,
        global_step=int(step) if isinstance(step, int | torch.Tensor) else None,
        ema=use_ema and has_ema,
    )
