import pytest
import torch

from ldm.modules.diffusionmodules.unet import UNetModel, timestep_embedding


def tiny_unet(**overrides):
    params = dict(
        in_channels=6, out_channels=3, model_channels=16, channel_mult=[1, 2], num_res_blocks=1,
        attention_resolutions=[2], num_head_channels=8,
    )
    params.update(overrides)
    return UNetModel(**params)


def randomise(model):
    """Zero-initialised layers hide wiring mistakes: give every weight a value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_output_shape_and_downsample_factor():
    unet = tiny_unet()
    assert unet.downsample_factor == 2
    assert tiny_unet(channel_mult=[1, 2, 2]).downsample_factor == 4
    out = unet(torch.randn(2, 6, 16, 24), torch.tensor([0, 999]))
    assert out.shape == (2, 3, 16, 24)


def test_zero_initialised_output_and_residual_convs():
    unet = tiny_unet()
    assert torch.count_nonzero(unet(torch.randn(1, 6, 8, 8), torch.tensor([5]))) == 0
    for block in [m for m in unet.modules() if type(m).__name__ == "ResBlock"]:
        assert torch.count_nonzero(block.out_layers[-1].weight) == 0


def test_attention_only_at_the_configured_downsample_factors():
    def n_attn(unet):
        return sum(type(m).__name__ == "AttentionBlock" for m in unet.modules())

    # the middle block always attends; [2] adds one per ResBlock at the 1/2 level (1 down + 2 up)
    assert n_attn(tiny_unet(attention_resolutions=[])) == 1
    assert n_attn(tiny_unet(attention_resolutions=[2])) == 4
    assert n_attn(tiny_unet(attention_resolutions=[1, 2])) == 7


def test_heads_from_num_heads_or_head_channels():
    heads = [m.num_heads for m in tiny_unet(num_head_channels=8).modules() if hasattr(m, "num_heads")]
    assert heads and all(h == 4 for h in heads)  # 32 channels / 8
    heads = [m.num_heads for m in tiny_unet(num_head_channels=-1, num_heads=2).modules() if hasattr(m, "num_heads")]
    assert all(h == 2 for h in heads)
    with pytest.raises(ValueError, match="heads"):
        tiny_unet(num_head_channels=-1, num_heads=3)


def test_channels_last_gives_the_same_result_and_gradients_flow():
    unet = randomise(tiny_unet())
    x, t = torch.randn(2, 6, 8, 8), torch.tensor([1, 500])
    ref = unet(x, t)
    out = unet.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters())


def test_bf16_autocast_stays_close_to_fp32():
    unet = randomise(tiny_unet())
    x, t = torch.randn(2, 6, 8, 8), torch.tensor([1, 500])
    ref = unet(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(x, t)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
