import math

import pytest
import torch

from ldm.modules.diffusionmodules.model import AttnBlock, Encoder, LatentDecoder, Normalize, ResnetBlock
from ldm.modules.distributions import DiagonalGaussian
from ldm.modules.losses import gradient_l1


@pytest.mark.parametrize("ch_mult,f", [([1], 1), ([1, 2], 2), ([1, 2, 2], 4), ([1, 1, 2, 2], 8)])
def test_encoder_and_latent_decoder_shapes(ch_mult, f):
    enc = Encoder(ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=4, embed_dim=3)
    dec = LatentDecoder(ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=4, embed_dim=3, out_ch=12)
    assert enc.downsample_factor == f
    z = enc(torch.randn(2, 1, 32, 24))
    assert z.shape == (2, 3, 32 // f, 24 // f)
    assert dec(z).shape == (2, 12, 32 // f, 24 // f)  # no upsampling: features stay at latent size


def test_encoder_doubles_the_latent_for_kl():
    enc = Encoder(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, embed_dim=3, double_z=True)
    assert enc(torch.randn(1, 1, 16, 16)).shape == (1, 6, 8, 8)


@pytest.mark.parametrize("channels,groups", [(16, 16), (48, 16), (64, 32), (256, 32), (24, 8)])
def test_normalize_picks_groups_that_divide(channels, groups):
    norm = Normalize(channels)
    assert norm.num_groups == groups and channels % norm.num_groups == 0


def test_resnet_block_changes_width():
    assert ResnetBlock(8, 16)(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)


def test_attention_block_equals_softmax_attention():
    torch.manual_seed(0)
    block = AttnBlock(8)
    x = torch.randn(2, 8, 4, 3)
    q, k, v = block.qkv(block.norm(x)).reshape(2, 3, 8, 12).unbind(1)  # (B, C, hw)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, hw, hw)
    expected = x + block.proj_out((v @ weights.transpose(1, 2)).reshape(2, 8, 4, 3))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_diagonal_gaussian():
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert torch.equal(posterior.mode(), mean)
    assert not torch.equal(posterior.sample(), posterior.sample())
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    assert torch.allclose(posterior.kl(), expected)
    standard = DiagonalGaussian(torch.zeros(1, 6, 4, 4))
    assert torch.allclose(standard.kl(), torch.zeros(1))


def test_gradient_l1():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert gradient_l1(x, x + 5) == 0  # a constant offset has the same gradients
    assert torch.isclose(gradient_l1(x, torch.zeros_like(x)), torch.tensor(4.0 + 1.0))
