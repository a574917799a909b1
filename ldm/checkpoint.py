"""Loading checkpoints without running code, and the shareable export (EMA weights + config).

torch.load(weights_only=True) refuses anything but tensors and plain containers, so a
checkpoint someone sent cannot execute code on load. Checkpoints this project writes hold
only such data; one that needs arbitrary unpickling is refused unless the user trusts it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint needs arbitrary unpickling (it could run code)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's weights do not fit the model built from the config."""


def load_checkpoint(path: str | os.PathLike[str], trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; refuse pickled objects unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise UnsafeCheckpointError(
                f"{path}: checkpoint holds pickled objects that could run code; refusing to load "
                "(pass --trust_checkpoint only if you trust its origin)"
            ) from err
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise RuntimeError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    return ckpt


def state_dict_of(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint (or of a bare state dict)."""
    state = ckpt.get("state_dict", ckpt)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load weights strictly; a mismatch names the missing, unexpected and mis-shaped keys."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                detail = ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if label == "shape mismatch" else k
                    for k in keys[:4]
                )
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label}: {detail}{more}")
        raise CheckpointMismatchError(
            f"{source}: weights do not match the configured architecture; " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=not ignore_prefixes)
