"""BatchNorm folding: same outputs, fewer modules, the caller's model left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_unetseg.config import ModelConfig
from napari_unetseg.models import build_model, fold_batchnorm


def tiny(arch: str = "unet", **kw) -> ModelConfig:
    kw = {"depth": 2, "width": 4, **kw}
    return ModelConfig(arch=arch, **kw)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters in every BatchNorm (identity ones would
    hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.25 + 1.75 * torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model


def make(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(build_model(cfg), seed)


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def n_working(model: nn.Module) -> int:
    """Leaf modules that compute something (not Identity)."""
    return sum(not list(m.children()) and not isinstance(m, nn.Identity) for m in model.modules())


def assert_same_output(model: nn.Module, folded: nn.Module, x: torch.Tensor, **kw) -> None:
    model.eval()
    with torch.no_grad():
        ref, out = model(x, **kw), folded(x, **kw)
    if not isinstance(ref, list):
        ref, out = [ref], [out]
    for r, o in zip(ref, out, strict=True):
        assert o.shape == r.shape and o.dtype == r.dtype
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


# --- equal outputs -------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_unet_output_unchanged(padding):
    model = make(tiny(padding=padding))
    size = model.valid_input_size(44 if padding == "valid" else 20)
    x = rand(2, 1, size, size)
    folded = fold_batchnorm(model)
    assert_same_output(model, folded, x)
    assert folded.margin == model.margin
    assert folded.valid_input_size(45) == model.valid_input_size(45)


def test_unetpp_every_level_unchanged():
    model = make(tiny("unetpp"))
    folded = fold_batchnorm(model)
    x = rand(1, 1, 20, 20)
    for level in model.levels:
        assert_same_output(model, folded, x, level=level)
    assert n_bn(folded) == 0


@pytest.mark.parametrize("block", ["basic", "bottleneck", "simple"])
def test_resunet_output_unchanged_preact_bn_kept(block):
    model = make(tiny("resunet", block=block))
    folded = fold_batchnorm(model)
    assert_same_output(model, folded, rand(1, 1, 16, 16))
    # pre-activation BN -> ReLU -> conv cannot be folded: every BN stays
    assert n_bn(folded) == n_bn(model) > 0


def test_folded_unet_has_no_batchnorm_and_fewer_modules():
    model = make(tiny())
    folded = fold_batchnorm(model)
    bns = n_bn(model)
    assert bns == 2 * (2 * 2 + 1)  # 2 per conv block: 2 encoder, bottom, 2 decoder
    assert n_bn(folded) == 0
    assert n_working(folded) == n_working(model) - bns
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert type(folded) is type(model) and folded.config == model.config
    assert not folded.training


def test_model_without_batchnorm_passes_through():
    model = make(tiny(batchnorm=False))
    folded = fold_batchnorm(model)
    x = rand(1, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
    assert n_working(folded) == n_working(model)


def test_float64_stays_float64():
    model = make(tiny()).double()
    folded = fold_batchnorm(model)
    assert all(p.dtype == torch.float64 for p in folded.parameters())
    x = rand(1, 1, 16, 16).double()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


# --- the caller's model --------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_original_model_untouched_and_trainable(training):
    model = make(tiny())
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bns = n_bn(model)

    folded = fold_batchnorm(model)

    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert not any(m.training for m in folded.modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert n_bn(model) == bns
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in folded.parameters()}

    model.train()
    model.zero_grad()
    model(rand(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# --- module patterns -----------------------------------------------------------------------


def test_sequential_patterns():
    """Conv with bias, BN without affine, BN with no conv before it, conv with no BN after
    it, BN with batch statistics, and a conv used twice (shared weights)."""
    torch.manual_seed(0)
    shared = nn.Conv2d(3, 3, 1)
    net = nn.Sequential(
        nn.BatchNorm2d(2),  # first: nothing to fold into
        nn.Conv2d(2, 3, 3, padding=1, bias=True),
        nn.BatchNorm2d(3, eps=0.5, affine=False),  # folded, with the conv's bias
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3, track_running_stats=False),  # batch statistics: kept
        nn.Sequential(shared, nn.BatchNorm2d(3)),  # shared conv: kept
        shared,
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),  # folded
        nn.Conv2d(4, 2, 1),  # last: nothing after it
    )
    randomize_bn(net)
    folded = fold_batchnorm(net)
    kinds = [type(m) for m in folded]
    assert kinds[0] is nn.BatchNorm2d
    assert kinds[2] is nn.Identity and kinds[9] is nn.Identity
    assert kinds[5] is nn.BatchNorm2d and type(folded[6][1]) is nn.BatchNorm2d
    assert folded[6][0] is folded[7]  # sharing survives the copy
    assert_same_output(net, folded, rand(4, 2, 8, 8))


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fold_batchnorm("model")
