import pytest
import torch

from ldm.modules.tiles import tile_spans, tiled


@pytest.mark.parametrize("n,tile,overlap,multiple", [(512, 128, 16, 2), (1024, 128, 16, 4), (130, 128, 16, 2),
                                                     (200, 64, 8, 8), (96, 96, 16, 2), (257, 100, 0, 1)])
def test_tiles_cover_the_latent_within_the_size_with_the_overlap(n, tile, overlap, multiple):
    spans = tile_spans(n, tile, overlap, multiple)
    covered = torch.zeros(n, dtype=torch.bool)
    for start, stop in spans:
        assert 0 <= start < stop <= n and stop - start <= tile
        covered[start:stop] = True
    assert covered.all()
    if len(spans) > 1:
        assert all(start % multiple == 0 for start, _ in spans)
        assert all(a[1] - b[0] >= overlap - multiple for a, b in zip(spans, spans[1:], strict=False))


def _pointwise(x, t, cond):
    return 2 * x + cond + t.float()[:, None, None, None]


def test_tiled_denoising_of_a_pointwise_model_is_the_whole_denoising():
    # the blending weights sum to one everywhere: where tiles agree, tiling changes nothing
    x, cond, t = torch.randn(2, 3, 100, 72), torch.randn(2, 3, 100, 72), torch.tensor([5, 7])
    torch.testing.assert_close(tiled(_pointwise, 32, 8, 2)(x, t, cond=cond), _pointwise(x, t, cond))


def test_the_model_never_sees_more_than_a_tile_and_a_small_latent_is_one_call():
    seen = []

    def model(x, t, cond):
        seen.append(tuple(x.shape[-2:]))
        assert cond.shape == x.shape
        return x

    tiled(model, 32, 8, 2)(torch.zeros(1, 3, 100, 72), torch.zeros(1), cond=torch.zeros(1, 3, 100, 72))
    assert len(seen) > 1 and max(max(s) for s in seen) <= 32
    seen.clear()
    x = torch.randn(1, 3, 32, 20)
    assert tiled(model, 32, 8, 2)(x, torch.zeros(1), cond=x) is x and seen == [(32, 20)]
    assert tiled(model, None, 8, 2) is model


def test_a_position_dependent_model_blends_without_seams():
    # a model whose output depends on where the tile starts (GroupNorm-like per-tile statistics):
    # the blend stays between the tiles' answers and changes smoothly across the overlaps
    def model(x, t, cond):
        return x - x.mean(dim=(-2, -1), keepdim=True)

    x = torch.linspace(0, 1, 96)[None, None, None].expand(1, 1, 8, 96).contiguous()
    out = tiled(model, 32, 16, 2)(x, torch.zeros(1), cond=x)[0, 0, 0]
    assert out.diff().abs().max() < 4 * (1 / 95)


def test_the_ldm_denoises_a_large_latent_in_tiles_and_a_small_one_whole():
    from pathlib import Path

    from omegaconf import OmegaConf

    from ldm.config import load_config
    from ldm.util import instantiate_from_config

    node = OmegaConf.to_container(load_config(Path(__file__).parents[2] / "configs" / "latent-diffusion" /
                                              "ct-tiny.yaml").model, resolve=True)
    node["params"]["first_stage_config"]["params"]["ckpt_path"] = None
    node["params"]["sample_tile_overlap"] = 4
    torch.manual_seed(0)
    model = instantiate_from_config(node, key="model").eval()
    with torch.no_grad():  # trained-like weights: the zero-initialised output layers would hide the tiling
        for p in model.unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    seen = []
    model.unet.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    whole = model.super_resolve(lr, (64, 64), steps=2, seed=0, tile=0)
    latent = seen[0]
    assert max(latent) > 8, "the test needs a latent larger than its tile"
    seen.clear()
    assert torch.equal(model.super_resolve(lr, (64, 64), steps=2, seed=0, tile=max(latent)), whole)
    seen.clear()
    parts = model.super_resolve(lr, (64, 64), steps=2, seed=0, tile=8)
    assert max(max(s) for s in seen) <= 8 and len(seen) > 2
    assert parts.shape == whole.shape and torch.isfinite(parts).all()
    assert model.sampling(tile=8).tile == 8 and model.sampling(tile=0).tile is None


def test_the_first_stage_encodes_and_decodes_a_large_slice_in_tiles():
    from pathlib import Path

    from omegaconf import OmegaConf

    from ldm.models.autoencoder import ImplicitAutoencoder

    params = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs" / "first-stage" /
                                                   "ct-tiny.yaml").model.params, resolve=True)
    params.pop("ckpt_path", None)
    torch.manual_seed(0)
    ae = ImplicitAutoencoder(**{**params, "tile": 8, "tile_overlap": 2}).eval()
    seen = []
    for part in (ae.encoder, ae.decoder):
        part.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    f = ae.downsample_factor
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape[-2:] == (64 // f, 64 // f) and max(max(s) for s in seen) <= 8 * f
        seen.clear()
        feat = ae.features(z)
        assert feat.shape[-2:] == z.shape[-2:] and max(max(s) for s in seen) <= 8
        # where the whole fits in a tile, nothing changes
        ae.tile = 64
        torch.testing.assert_close(ae.encode(x), ae.encoder(x), rtol=0, atol=0)
        torch.testing.assert_close(ae.features(z), ae.decoder(z), rtol=0, atol=0)
