"""Property test: the implicit decoder renders any grid at any scale, and chunking never changes it."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ldm.modules.implicit.liif import LIIF

torch.manual_seed(0)
DECODERS = {unfold: LIIF(in_dim=4, hidden=(16, 16), feat_unfold=unfold).double().eval() for unfold in (False, True)}


@settings(max_examples=40, deadline=None)
@given(
    out_h=st.integers(1, 48),
    out_w=st.integers(1, 48),
    scale=st.floats(1.0, 16.0, exclude_min=True, allow_nan=False),
    chunk=st.integers(1, 3000),
    unfold=st.booleans(),
    with_lr=st.booleans(),
)
def test_any_size_any_scale_any_chunk(out_h, out_w, scale, chunk, unfold, with_lr):
    liif = DECODERS[unfold]
    feat_hw = (max(1, round(out_h / scale)), max(1, round(out_w / scale)))
    generator = torch.Generator().manual_seed(out_h * 1000 + out_w)
    feat = torch.randn(2, 4, *feat_hw, generator=generator, dtype=torch.float64)
    lr = torch.randn(2, 1, *feat_hw, generator=generator, dtype=torch.float64) if with_lr else None
    with torch.no_grad():
        whole = liif.render(feat, (out_h, out_w), lr=lr, chunk_size=None if chunk > 2500 else 10**9)
        chunked = liif.render(feat, (out_h, out_w), lr=lr, chunk_size=chunk)
    assert whole.shape == chunked.shape == (2, 1, out_h, out_w)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)
