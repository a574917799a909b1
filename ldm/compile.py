"""torch.compile for the hot parts of a model, with a fallback to eager when compilation fails.

Shadowing a module's `forward` (or LIIF's per-chunk `_query`) with its compiled version keeps
parameter names, the EMA and checkpoints unchanged. Compilation is lazy: a part that fails to
compile (no C++ compiler, an unsupported op, a new shape that breaks the backend) warns once and
runs eager from then on, so `--compile` can only make a run faster, never stop it. Other errors
(out of memory, bad input) propagate as they would without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

Part = tuple[object, str]  # (owner, attribute): e.g. (model.unet, "forward")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def hot_parts(model: nn.Module) -> list[Part]:
    """What inference spends its time in: the denoiser, the encoder, the conv decoder, the LIIF query.

    Works for the LDM (its UNet and its first stage), the first stage alone and the LIIF baseline.
    """
    parts: list[Part] = []
    if isinstance(getattr(model, "unet", None), nn.Module):
        parts.append((model.unet, "forward"))
    body = getattr(model, "first_stage", model)
    for name in ("encoder", "decoder"):
        if isinstance(getattr(body, name, None), nn.Module):
            parts.append((getattr(body, name), "forward"))
    if isinstance(getattr(body, "liif", None), nn.Module):
        parts.append((body.liif, "_query"))
    return parts


def _is_compiler_error(err: BaseException) -> bool:
    """An error raised by dynamo or inductor (or the C++ / Triton toolchain under them)."""
    module = type(err).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or "CppCompileError" in type(err).__name__


FELL_BACK: list[str] = []
"""Every part that fell back to eager in this process ("Class.attr"), in order: bench/ checks it
after each timed row, so a row whose shape failed to recompile is not labelled compiled."""


def compile_parts(parts: Sequence[Part], mode: str = "default", dynamic: bool | None = None) -> Callable[[], None]:
    """Shadow each owner.<attr> with its compiled version (eager fallback on a compiler error).

    Returns `restore()`, which puts the originals back. dynamic=None lets torch mark a dimension
    dynamic once it has seen it change (eval_sr.py's several scales), False compiles per shape.
    A part that is already compiled is left as it is.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode: expected one of {', '.join(COMPILE_MODES)}, got '{mode}'")
    shadowed: list[tuple[object, str, Any, bool]] = []

    def restore() -> None:
        for owner, attr, original, was_own in reversed(shadowed):
            if was_own:
                setattr(owner, attr, original)
            elif attr in vars(owner):
                delattr(owner, attr)
        shadowed.clear()

    for owner, attr in parts:
        original = getattr(owner, attr)
        if getattr(original, "_ldm_compiled", False):
            continue
        # a bound method is shadowed by an instance attribute and restored by deleting it
        was_own = attr in vars(owner)
        setattr(owner, attr, _with_fallback(owner, attr, original, torch.compile(original, mode=mode, dynamic=dynamic)))
        shadowed.append((owner, attr, original, was_own))
    return restore


def _with_fallback(owner: object, attr: str, original: Callable, compiled: Callable) -> Callable:
    state = {"compiled": True}
    name = f"{type(owner).__name__}.{attr}"

    def call(*args: Any, **kwargs: Any) -> Any:
        if state["compiled"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # only compiler failures fall back; the rest is the caller's
                if not _is_compiler_error(err):
                    raise
                compile_error = err
            # dynamo also wraps the caller's own errors met while tracing (a wrong shape): if the
            # eager call fails as well, that error is the caller's and compilation stays on
            out = original(*args, **kwargs)
            state["compiled"] = False
            FELL_BACK.append(name)
            text = str(compile_error).strip()
            warnings.warn(f"torch.compile of {name} failed, running it eager "
                          f"({type(compile_error).__name__}: {text.splitlines()[0] if text else ''})", stacklevel=2)
            return out
        return original(*args, **kwargs)

    call._ldm_compiled = True  # type: ignore[attr-defined]
    return call
