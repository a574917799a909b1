"""Inference and benchmark precision: "fp32" (torch's default) or "bf16" (torch.autocast).

bf16 is what Lightning's precision=bf16-mixed does during training: matmuls and convolutions in
bfloat16, reductions and the LIIF output layer in float32 (ldm.modules.implicit.liif). On an
H100 it is several times faster than fp32 for the UNet and the decoder. Its rounding is not free
at the accuracy CT reaches: a LIIF's bf16 and fp32 outputs agreed to 71.6 dB in a CPU check, which
can cost tenths of a dB next to a 60 dB x2 result. Tables are reported in fp32 (the default);
eval_sr.py --precision bf16 against fp32 measures the difference on one's own data.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: str | torch.device) -> None:
    """ValueError naming the flag for an unknown precision or bf16 on a GPU without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {', '.join(PRECISIONS)}, got '{precision}'")
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 (use fp32)")


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """fp32: nothing; bf16: torch.autocast(device type, bfloat16)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got '{precision}'")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
