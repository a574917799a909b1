import pytest
import torch
import torch.nn.functional as F

from ldm.modules.implicit.coords import make_cell, make_coord
from ldm.modules.implicit.liif import LIIF, lr_reading


def naive_liif(liif: LIIF, feat, coords, cells):
    """LIIF's query_rgb as published: grid_sample lookups, unfold, concatenate, then the whole MLP."""
    if liif.feat_unfold:
        feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], feat.shape[1] * 9, *feat.shape[-2:])
    h, w = feat.shape[-2:]
    feat_coord = make_coord((h, w), dtype=feat.dtype, flatten=False).permute(2, 0, 1)  # (2, h, w)
    feat_coord = feat_coord[None].expand(feat.shape[0], 2, h, w)
    preds, areas = [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            c = coords.clone()
            c[:, :, 0] += vx / h + 1e-6
            c[:, :, 1] += vy / w + 1e-6
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)
            q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            size = coords.new_tensor([h, w])
            rel = (coords - q_coord) * size
            x = torch.cat([q_feat, rel, cells * size], dim=-1)
            for i, layer in enumerate(liif.layers):
                x = layer(x if i == 0 else F.relu(x))
            preds.append(x)
            areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = torch.stack(areas).sum(0)
    areas = areas[::-1]
    return sum(p * (a / total)[..., None] for p, a in zip(preds, areas, strict=True))


def random_queries(b, n, out_hw):
    coords = torch.rand(b, n, 2) * 2 - 1
    coords[:, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 0.99], [0.999, -0.999]])  # the borders
    return coords, make_cell(out_hw, n).expand(b, n, 2)


@pytest.mark.parametrize("feat_unfold", [False, True])
def test_grid_first_layer_equals_naive_liif(feat_unfold):
    torch.manual_seed(0)
    liif = LIIF(6, out_dim=2, hidden=[16, 16], feat_unfold=feat_unfold)
    feat = torch.randn(2, 6, 7, 5)
    coords, cells = random_queries(2, 300, (23, 17))
    assert torch.allclose(liif(feat, coords, cells), naive_liif(liif, feat, coords, cells), atol=1e-5)
    # the same gradients for the feature map and every weight (the first layer is split), in float64:
    # in float32 the naive reference's own gradients are off by up to 1e-3 against float64
    liif, coords, cells = liif.double(), coords.double(), cells.double()
    feat = feat.double().requires_grad_(True)
    fast, naive = liif(feat, coords, cells), naive_liif(liif, feat, coords, cells)
    assert torch.allclose(fast, naive, atol=1e-10)
    weights = [feat, *liif.parameters()]
    fast_grads = torch.autograd.grad(fast.square().sum(), weights)
    naive_grads = torch.autograd.grad(naive.square().sum(), weights)
    for a, b in zip(fast_grads, naive_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-9)


def test_chunked_equals_unchunked():
    torch.manual_seed(1)
    liif = LIIF(4, hidden=[8])
    feat = torch.randn(3, 4, 6, 6)
    coords, cells = random_queries(3, 250, (20, 20))
    whole = liif(feat, coords, cells, chunk_size=None)
    for chunk in (1, 7, 64, 10_000):
        assert torch.allclose(liif(feat, coords, cells, chunk_size=chunk), whole, atol=1e-6)


@pytest.mark.parametrize("out_hw", [(64, 64), (100, 37), (33, 23)])  # (33, 23): x3.3 of a 10 x 7 feature
def test_render_any_grid(out_hw):
    torch.manual_seed(2)
    liif = LIIF(4, hidden=[8, 8])
    feat = torch.randn(2, 4, 10, 7)
    image = liif.render(feat, out_hw, chunk_size=500)
    assert image.shape == (2, 1, *out_hw)
    coords = make_coord(out_hw).expand(2, -1, -1)
    cells = make_cell(out_hw).expand(2, -1, -1)
    values = liif(feat, coords, cells)  # (B, H*W, 1)
    assert torch.allclose(image, values.transpose(1, 2).reshape(2, 1, *out_hw), atol=1e-6)


def test_lr_reading_is_bicubic_upsampling_on_a_grid():
    torch.manual_seed(3)
    lr = torch.randn(2, 1, 9, 6)
    out_hw = (27, 13)  # non-square and non-integer in one axis: catches a swapped (row, col)
    values = lr_reading(lr, make_coord(out_hw).expand(2, -1, -1))
    assert values.shape == (2, 27 * 13, 1)
    expected = F.interpolate(lr, size=out_hw, mode="bicubic", align_corners=False)
    assert torch.allclose(values.transpose(1, 2).reshape(2, 1, *out_hw), expected, atol=1e-5)


def test_lr_skip_adds_the_bicubic_reading():
    torch.manual_seed(4)
    liif = LIIF(4, hidden=[8])
    feat, lr = torch.randn(2, 4, 5, 5), torch.randn(2, 1, 5, 5)
    coords, cells = random_queries(2, 50, (15, 15))
    with_skip = liif(feat, coords, cells, lr=lr)
    assert torch.allclose(with_skip, liif(feat, coords, cells) + lr_reading(lr, coords), atol=1e-6)


def test_a_given_reading_replaces_the_bicubic_one():
    torch.manual_seed(4)
    liif = LIIF(4, hidden=[8], lr_cell=True)
    feat, lr = torch.randn(2, 4, 5, 5), torch.randn(2, 1, 5, 5)
    coords, cells = random_queries(2, 50, (15, 15))

    def reading(c, cell):  # any function of the query points, e.g. a trained regressor's SR
        return c.sum(-1, keepdim=True) + cell[..., :1]

    # chunked like a large render: the reading is asked for each chunk's own points
    out = liif(feat, coords, cells, lr=lr, reading=reading, chunk_size=16)
    correction = liif(feat, coords, cells, lr=lr) - lr_reading(lr, coords)
    assert torch.allclose(out, correction + reading(coords, cells), atol=1e-6)


def test_zero_initialised_output_returns_exactly_the_lr_reading():
    liif = LIIF(4, hidden=[8], zero_init_output=True)
    feat, lr = torch.randn(1, 4, 5, 5), torch.randn(1, 1, 5, 5)
    image = liif.render(feat, (12, 9), lr=lr)
    coords = make_coord((12, 9))[None]
    assert torch.equal(image.reshape(1, -1), lr_reading(lr, coords).reshape(1, -1))


def test_query_is_differentiable_in_the_feature():
    liif = LIIF(4, hidden=[8])
    feat = torch.randn(1, 4, 5, 5, requires_grad=True)
    liif.render(feat, (11, 11), chunk_size=30).sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0


def test_bf16_autocast_keeps_the_output_layer_in_float32():
    """A bf16 output would round values to 8 HU steps; the last layer runs in float32 under autocast."""
    liif = LIIF(4, hidden=[8], zero_init_output=True)
    with torch.no_grad():
        liif.layers[-1].bias.fill_(0.123456789)  # not a bf16 number: bf16 gives 0.12353515625
    coords, cells = random_queries(1, 40, (9, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = liif(torch.randn(1, 4, 5, 5), coords, cells)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 0.123456789), rtol=0, atol=1e-7)


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(5)
    liif = LIIF(4, hidden=[16, 16])
    feat = torch.randn(1, 4, 6, 6)
    coords, cells = random_queries(1, 200, (20, 20))
    ref = liif(feat, coords, cells)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = liif(feat, coords, cells)
    assert torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 2e-2


def test_no_hidden_layer_is_refused():
    with pytest.raises(ValueError, match="hidden"):
        LIIF(4, hidden=[])
