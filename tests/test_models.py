"""Networks: shapes, gradients, config round trip, input errors, UNet++ pruning, U-Net geometry.

BaseModelTester style (segmentation_models_pytorch): the generic checks are parametrized over
the three architectures; architecture-specific checks follow. Tiny widths keep it fast.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from napari_unetseg.config import ARCHS, ModelConfig
from napari_unetseg.models import (
    ARCHITECTURES,
    SegmentationNet,
    build_model,
    count_flops,
    describe,
)
from napari_unetseg.models.base import pad_to_multiple


def tiny(arch: str, **kw) -> ModelConfig:
    kw = {"depth": 2, "width": 4, **kw}
    return ModelConfig(arch=arch, **kw)


def make(cfg: ModelConfig, seed: int = 0) -> SegmentationNet:
    torch.manual_seed(seed)
    return build_model(cfg)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- generic, per architecture -------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_all_params_get_gradient(arch):
    model = make(tiny(arch, depth=3))
    x = rand(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 2, 32, 32)
    assert out.dtype == torch.float32
    target = torch.randint(0, 2, (2, 32, 32), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(out, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("depth", "hw"), [(2, (37, 53)), (3, (37, 53)), (3, (8, 9)), (2, (4, 4))])
def test_any_size_gives_same_size_output(arch, depth, hw):
    model = make(tiny(arch, depth=depth)).eval()
    with torch.no_grad():
        out = model(rand(1, 1, *hw))
    assert out.shape == (1, 2, *hw)
    assert torch.isfinite(out).all()
    assert model.margin == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_and_classes(arch):
    model = make(tiny(arch, in_channels=3, classes=3)).eval()
    with torch.no_grad():
        out = model(rand(2, 3, 20, 24))
    assert out.shape == (2, 3, 20, 24)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_padding_is_centred_reflection_cropped_back(arch):
    model = make(tiny(arch, depth=2)).eval()
    x = rand(1, 1, 30, 29)
    padded = F.pad(x, (1, 2, 1, 1), mode="reflect")  # 30x29 -> 32x32, as the model pads
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., 1:31, 1:30], atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trip_gives_same_output(arch):
    cfg = tiny(arch, depth=3, classes=3)
    model = make(cfg, seed=0).eval()
    again = build_model(ModelConfig.from_json(ModelConfig.from_dict(cfg.to_dict()).to_json()))
    assert again.config == cfg
    again.load_state_dict(model.state_dict())
    again.eval()
    x = rand(1, 1, 24, 40)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    other = make(cfg, seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), other(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_inputs_raise(arch):
    model = make(tiny(arch))
    for shape in [(1, 16, 16), (1, 1, 1, 16, 16), (1, 2, 16, 16), (16, 16)]:
        with pytest.raises(ValueError, match=r"expected input of shape \(N, C=1, H, W\)"):
            model(torch.zeros(shape))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])


@pytest.mark.parametrize("arch", ARCHS)
def test_other_float_dtypes_and_autocast(arch):
    model = make(tiny(arch)).eval()
    x = rand(1, 1, 13, 19)
    with torch.no_grad():
        assert torch.equal(model(x.double()), model(x))  # converted to the model's dtype
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(rand(1, 1, 13, 19).double())
    assert out.shape == (1, 2, 13, 19)
    assert out.dtype == torch.bfloat16  # logits follow autocast: cast before the loss


@pytest.mark.parametrize("arch", ARCHS)
def test_too_small_image_raises(arch):
    model = make(tiny(arch, depth=3)).eval()  # eval: BatchNorm on 1x1 maps needs N > 1
    for hw in [(1, 1), (7, 20), (20, 7)]:
        with pytest.raises(ValueError, match=r"too small for depth 3: need at least 8x8"):
            model(torch.zeros(1, 1, *hw))
    model(torch.zeros(1, 1, 8, 8))  # the smallest allowed size works


@pytest.mark.parametrize("arch", ["unet", "resunet"])
def test_single_output_networks_accept_only_level_none(arch):
    model = make(tiny(arch)).eval()
    assert model.num_levels == 1
    x = rand(1, 1, 16, 16)
    assert model(x, level=None).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="level must be None"):
        model(x, level=1)


def test_registry_and_build_errors():
    assert set(ARCHITECTURES) == set(ARCHS)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"arch": "unet"})
    cfg = ModelConfig()
    object.__setattr__(cfg, "arch", "segnet")  # bypass validation to reach the registry
    with pytest.raises(ValueError, match="segnet.*resunet, unet, unetpp"):
        build_model(cfg)


def test_pad_to_multiple_reflects_and_falls_back_to_replicate():
    x = torch.arange(5.0).reshape(1, 1, 1, 5)
    padded, (top, left) = pad_to_multiple(x, 8)  # height 1 cannot be reflected
    assert padded.shape == (1, 1, 8, 8)
    assert (top, left) == (3, 1)
    assert torch.equal(padded[0, 0, top, left : left + 5], x[0, 0, 0])
    assert torch.equal(padded[0, 0, :, 0], torch.full((8,), 1.0))  # width reflected: x[1]
    assert torch.equal(padded[0, 0, 0], padded[0, 0, top])  # height replicated
    same, off = pad_to_multiple(torch.zeros(1, 1, 8, 16), 8)
    assert same.shape == (1, 1, 8, 16) and off == (0, 0)


# --- UNet++ ----------------------------------------------------------------------------------
def test_unetpp_heads_and_paper_names():
    model = make(tiny("unetpp", depth=3))
    assert model.num_levels == 3
    assert list(model.heads) == ["x_0_1", "x_0_2", "x_0_3"]
    assert "x_1_2" in model.nodes and "x_3_0" in model.nodes and "x_1_3" not in model.nodes
    outs = model(rand(1, 1, 16, 16), level="all")
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == (1, 2, 16, 16) for o in outs)


def test_unetpp_pruned_level_equals_head_of_full_forward():
    model = make(tiny("unetpp", depth=3, classes=3))
    model.train()
    model(rand(2, 1, 24, 24, seed=5))  # move BatchNorm running stats off their init
    model.eval()
    x = rand(1, 1, 21, 27)
    with torch.no_grad():
        outs = model(x, level="all")
        for level in (1, 2, 3):
            assert torch.allclose(model(x, level=level), outs[level - 1], atol=1e-6)
        assert torch.allclose(model(x, level=None), model(x, level="accurate"))
        assert not torch.allclose(outs[0], outs[2])


def test_unetpp_accurate_averages_the_heads_probabilities():
    """Zhou et al. 2018: the accurate mode averages the heads' segmentation maps."""
    for classes in (3, 1):
        model = make(tiny("unetpp", depth=3, classes=classes)).eval()
        x = rand(1, 1, 16, 16, seed=3)
        with torch.no_grad():
            heads = model(x, level="all")
            acc = model(x)

        def prob(z, classes=classes):
            return z.softmax(1) if classes > 1 else z.sigmoid()

        mean_p = torch.stack([prob(h) for h in heads]).mean(0)
        assert torch.allclose(prob(acc), mean_p, atol=1e-6)
        assert not torch.allclose(prob(torch.stack(heads).mean(0)), mean_p, atol=1e-4)


def test_unetpp_level_computes_only_the_nodes_it_needs():
    """Level L runs the (L + 1)(L + 2) / 2 nodes X(i, j), i + j <= L: 3, 6, 10 and 15."""
    model = make(tiny("unetpp", depth=4)).eval()
    ran: list[str] = []
    for name, node in model.nodes.items():
        node.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    heads: list[str] = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: heads.append(name))
    for level, count in ((1, 3), (2, 6), (3, 10), (4, 15)):
        ran.clear()
        heads.clear()
        with torch.no_grad():
            model(rand(1, 1, 16, 16), level=level)
        assert len(ran) == count
        assert all(int(n.split("_")[1]) + int(n.split("_")[2]) <= level for n in ran)
        assert heads == [f"x_0_{level}"]


def test_unetpp_flops_grow_with_level_and_stay_below_full():
    model = make(tiny("unetpp", depth=3)).eval()
    flops = [count_flops(model, 32, level) for level in (1, 2, 3)]
    full = count_flops(model, 32, "accurate")
    assert flops[0] < flops[1] < flops[2] < full


def test_unetpp_pruned_forward_uses_exactly_its_parameters():
    model = make(tiny("unetpp", depth=3))
    used = {id(p) for p in model.parameters_for_level(2)}
    model(rand(1, 1, 16, 16), level=2).square().mean().backward()
    got_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert got_grad == used
    assert len(used) < len(list(model.parameters()))


def test_unetpp_bad_level_lists_valid_ones():
    model = make(tiny("unetpp", depth=2))
    for level in (0, 3, "fast", True, 1.0):
        with pytest.raises(ValueError, match=r"1, 2, 'accurate', 'all'"):
            model(rand(1, 1, 8, 8), level=level)


def test_unetpp_without_deep_supervision_accurate_is_last_head():
    model = make(tiny("unetpp", depth=2, deep_supervision=False)).eval()
    x = rand(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, level=2))
        for untrained in (1, "all"):  # heads no loss ever reached
            with pytest.raises(ValueError, match="without deep supervision"):
                model(x, level=untrained)


# --- U-Net, unpadded ---------------------------------------------------------------------------
def test_unet_valid_padding_paper_geometry():
    cfg = ModelConfig(depth=4, width=64, padding="valid", batchnorm=False)
    with torch.device("meta"):
        paper = build_model(cfg)
    assert paper.margin == 92
    assert paper(torch.zeros(1, 1, 572, 572, device="meta")).shape == (1, 2, 388, 388)
    assert paper.valid_input_size(570) == 572 and paper.valid_input_size(572) == 572
    assert paper.valid_input_size(1) == 188
    with pytest.raises(ValueError, match="nearest valid sizes are 556 or 572"):
        paper(torch.zeros(1, 1, 570, 572, device="meta"))
    with pytest.raises(ValueError, match="too small for depth 4: need at least 188x188"):
        paper(torch.zeros(1, 1, 100, 100, device="meta"))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_valid_margin_matches_real_forward(depth):
    model = make(tiny("unet", depth=depth, padding="valid", width=2)).eval()
    n = model.valid_input_size(60)
    h, w = n, model.valid_input_size(n + 1)
    with torch.no_grad():
        out = model(rand(1, 1, h, w))
    assert out.shape == (1, 2, h - 2 * model.margin, w - 2 * model.margin)
    assert model.margin == 6 * 2**depth - 4
    assert model.output_size(h) == h - 2 * model.margin
    with pytest.raises(ValueError, match="not valid for padding='valid'"):
        model(rand(1, 1, n + 1, n))


def test_unet_paper_parameter_count():
    cfg = ModelConfig(depth=4, width=64, batchnorm=False, classes=2)
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(cfg).parameters())
    assert abs(n - 31_030_658) / 31_030_658 < 0.01
    assert describe(cfg)["params"] == n


# --- ResUNet ablation ----------------------------------------------------------------------------
def _n_params(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("block", ["basic", "bottleneck", "simple"])
def test_resunet_blocks_and_short_skip_ablation(block):
    cfg = tiny("resunet", depth=2, width=8, block=block)
    plain = dataclasses.replace(cfg, short_skips=False)
    assert _n_params(plain) < _n_params(cfg)  # the 1x1 projections are gone
    model = make(plain).eval()
    assert all(b.shortcut is None for b in model.encoder)
    with torch.no_grad():
        assert model(rand(1, 1, 13, 17)).shape == (1, 2, 13, 17)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "simple"])
def test_residual_block_adds_the_identity_shortcut(kind):
    from napari_unetseg.models.blocks import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(8, 8, kind).eval()
    x = rand(2, 8, 6, 6)
    with torch.no_grad():
        assert isinstance(block.shortcut, torch.nn.Identity)
        assert torch.allclose(block(x), block.residual(x) + x, atol=1e-6)
        plain = ResidualBlock(8, 8, kind, short_skip=False).eval()
        plain.load_state_dict(block.state_dict())
        assert torch.allclose(plain(x), block(x) - x, atol=1e-6)


def test_resunet_blocks_per_level_and_dropout():
    cfg = tiny("resunet", depth=2, width=4, block="bottleneck", blocks_per_level=(1, 3, 2))
    model = make(cfg)
    assert isinstance(model.encoder[0], torch.nn.Module) and len(model.encoder[1]) == 3
    assert len(model.bottom) == 2 and len(model.decoder[1]) == 3
    assert _n_params(cfg) > _n_params(tiny("resunet", depth=2, width=4, block="bottleneck"))
    one = make(tiny("resunet", depth=2, width=4))  # one block: the state-dict names of old files
    assert "encoder.0.residual.0.2.weight" in one.state_dict()
    drop = make(dataclasses.replace(cfg, dropout=0.5))
    x = rand(2, 1, 16, 16)
    drop.train()
    assert not torch.allclose(drop(x), drop(x))  # dropout active in training
    drop.eval()
    with torch.no_grad():
        assert torch.equal(drop(x), drop(x))
    with pytest.raises(ValueError, match="depth \\+ 1"):
        tiny("resunet", depth=2, blocks_per_level=(1, 2))
    with pytest.raises(ValueError, match="for arch='resunet'"):
        tiny("unet", blocks_per_level=2)
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_resunet_block_kinds_differ():
    counts = {b: _n_params(tiny("resunet", width=8, block=b)) for b in ("basic", "bottleneck")}
    counts["simple"] = _n_params(tiny("resunet", width=8, block="simple"))
    assert len(set(counts.values())) == 3
    assert counts["simple"] < counts["basic"]


def test_resunet_long_skip_ablation_removes_decoder_skip_input():
    def decoder_inputs(cfg):
        model = make(cfg).eval()
        seen = {}
        model.up[0].register_forward_hook(lambda m, i, o: seen.setdefault("up", o))
        model.decoder[0].register_forward_hook(lambda m, i, o: seen.setdefault("dec", i[0]))
        with torch.no_grad():
            model(rand(1, 1, 16, 16))
        return seen["up"], seen["dec"]

    cfg = tiny("resunet", depth=2)
    up, dec = decoder_inputs(cfg)
    assert not torch.allclose(up, dec)  # long skip added
    up, dec = decoder_inputs(dataclasses.replace(cfg, long_skips=False))
    assert torch.equal(up, dec)  # decoder sees only the up-sampled path
    assert _n_params(dataclasses.replace(cfg, long_skips=False)) == _n_params(cfg)
    both_off = dataclasses.replace(cfg, long_skips=False, short_skips=False)
    out = make(both_off)(rand(1, 1, 16, 16))
    out.mean().backward()


# --- describe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_describe(arch):
    cfg = tiny(arch, depth=3, width=8)
    info = describe(cfg)
    assert info["arch"] == arch
    assert info["params"] == _n_params(cfg)
    assert info["flops_per_pixel"] > 0
    model = make(cfg).eval()
    assert info["flops"] == count_flops(model, info["input_size"])  # meta == real count
    if arch == "unetpp":
        by_flops, by_params = info["flops_per_pixel_by_level"], info["params_by_level"]
        assert len(by_flops) == len(by_params) == 3
        assert by_flops == sorted(set(by_flops)) and by_flops[-1] < info["flops_per_pixel"]
        assert by_params == sorted(set(by_params)) and by_params[-1] < info["params"]
