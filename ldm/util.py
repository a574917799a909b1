"""Config plumbing: `target`/`params` nodes and the atomic-write helper every output goes through."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config node is missing, malformed or names something that does not import."""


def get_obj_from_str(name: str, key: str = "target") -> Any:
    """Import `package.module.Attr`; errors name the config key and the dotted path."""
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}: '{name}' is not a dotted path like package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import module '{module_name}' ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"{key}: module '{module_name}' has no attribute '{attr}'") from err


def instantiate_from_config(config: Mapping[str, Any] | None, key: str = "config", **extra: Any) -> Any:
    """Build `target(**params, **extra)` from a config node; `key` names the node in error messages."""
    if config is None or not hasattr(config, "get") or "target" not in config:
        raise ConfigError(f"{key}: expected a node with 'target:' (and optional 'params:')")
    cls = get_obj_from_str(str(config["target"]), key=f"{key}.target")
    params = config.get("params") or {}
    if isinstance(params, DictConfig):
        # plain containers: models keep them as hyper-parameters, and checkpoints must unpickle safely
        params = OmegaConf.to_container(params, resolve=True)
    params = dict(params)
    params.update(extra)
    return cls(**params)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    A crash mid-write therefore never leaves a truncated file where a good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the result should be as readable as any file the user
    # writes (0666 less the umask), or colleagues sharing a results folder cannot open it
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def git_commit(repo: str | os.PathLike[str] | None = None) -> str:
    """The checkout's short commit ('unknown' outside a git checkout): results name the code."""
    import subprocess

    root = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def run_record(script: str, argv: list[str], **fields: Any) -> dict[str, Any]:
    """What produced an output: the command, the code's commit, the time, plus the caller's fields
    (seed, config and checkpoint hashes ...). Written beside every output folder as JSON."""
    import datetime
    import shlex

    return {
        "command": shlex.join(["python", script, *[str(a) for a in argv]]),
        "git_commit": git_commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **fields,
    }


def write_json_atomic(path: str | os.PathLike[str], document: Any) -> None:
    import json

    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def first_line(err: BaseException) -> str:
    """An error's first message line (its class name when the message is empty): for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's out-of-memory RuntimeError (CPU, MPS)."""
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
