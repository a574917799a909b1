"""Reading the project's YAML configs: one file may build on others instead of copying them.

Two keys, both resolved when the file is read (a run's saved configs/*-project.yaml holds the
result, so it never needs the files it was built from):
  inherit: FILE or [FILE, ...]   at the top of a file: those files first (merged left to right),
                                 this file's own keys over them. A stage-3 config is its stage-2
                                 config plus the few keys alignment changes.
  model_of: FILE                 anywhere inside: this mapping is the target and params of FILE's
                                 `model:` node, with the mapping's other keys over them. An LDM's
                                 first_stage_config names its stage-1 config, so the first-stage
                                 params are written once.
FILE is relative to the file that names it. A file that cannot be read, a loop of inherits or a
model_of file without `model:` raises ConfigError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.util import ConfigError

INHERIT, MODEL_OF = "inherit", "model_of"


def load_config(path: str | os.PathLike[str]) -> DictConfig:
    """One config file with its inherit / model_of references resolved (a DictConfig)."""
    return _load(Path(path), ())


def _read(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: not a valid YAML config ({str(err).splitlines()[0]})") from err
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys (model:, data:, ...)")
    return config


def _load(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(f"{path}: inherits itself ({' -> '.join(p.name for p in (*chain, resolved))})")
    chain = (*chain, resolved)
    config = _read(path)
    parents = config.pop(INHERIT, None)
    if isinstance(parents, str):
        parents = [parents]
    if parents is not None and not isinstance(parents, (ListConfig, list)):
        raise ConfigError(f"{path}: {INHERIT}: expected a file or a list of files")
    bases = [_load(path.parent / str(parent), chain) for parent in parents or []]
    own = _expand_model_of(config, path, chain)
    return OmegaConf.merge(*bases, own) if bases else own  # type: ignore[return-value]


def _expand_model_of(node: Any, path: Path, chain: tuple[Path, ...]) -> Any:
    """node with every {model_of: FILE, ...} mapping replaced by FILE's model node + the mapping's keys."""
    if isinstance(node, DictConfig):
        source = node.get(MODEL_OF)
        rest = OmegaConf.create({k: _expand_model_of(node[k], path, chain) for k in node if k != MODEL_OF})
        if source is None:
            return rest
        other = _load(path.parent / str(source), chain)
        if "model" not in other or not isinstance(other.model, DictConfig) or "target" not in other.model:
            raise ConfigError(f"{path}: {MODEL_OF}: {source} has no model: section with a target")
        model = OmegaConf.create({"target": other.model.target, "params": other.model.get("params") or {}})
        return OmegaConf.merge(model, rest)
    if isinstance(node, ListConfig):
        return OmegaConf.create([_expand_model_of(item, path, chain) for item in node])
    return node
