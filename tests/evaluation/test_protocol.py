"""ldm/evaluation/protocol.py: GT sizes, per-image seeds, seeded pairs and the refusal of bad values."""


import pytest
import torch

from ldm.evaluation.protocol import Protocol, scale_name


def test_gt_size_rounds_the_scaled_lr_size():
    protocol = Protocol(lr_size=16, scale_ratios=(2, 2.5, 3.7, 4))
    assert [protocol.out_size(s) for s in protocol.scale_ratios] == [(32, 32), (40, 40), (59, 59), (64, 64)]
    assert [scale_name(s) for s in protocol.scale_ratios] == ["x2", "x2.5", "x3.7", "x4"]


def test_pairs_are_seeded_per_image():
    protocol = Protocol(lr_size=16, scale_ratios=(4,), degradation="ct", noise_hu=20.0)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    gt, lr = protocol.pair(x, 4, seed=1)
    gt2, lr2 = protocol.pair(x, 4, seed=1)
    _, lr3 = protocol.pair(x, 4, seed=2)
    assert gt.shape == (1, 1, 64, 64) and lr.shape == (1, 1, 16, 16)
    assert torch.equal(lr, lr2) and not torch.equal(lr, lr3) and torch.equal(gt, gt2)
    assert torch.equal(protocol.lr_of(gt), protocol.lr_of(gt))  # no generator: the noise-free degradation


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_size=0, scale_ratios=(2,)), "--lr_size"),
    (dict(lr_size=16, scale_ratios=(1.0,)), "--scale_ratio: every scale must be > 1"),
    (dict(lr_size=16, scale_ratios=(2, 2)), "repeated scale"),
    (dict(lr_size=16, scale_ratios=(2,), degradation="jpeg"), "--degradation"),
])
def test_protocol_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**kwargs)
