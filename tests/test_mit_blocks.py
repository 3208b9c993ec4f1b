"""Issue 27: the MiT / SegFormer / DAFormer blocks against known answers computed apart from the model code."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.models import build_model
from sfda_deploy.models.mit import Attention, DepthwiseConv, MixVisionTransformer
from sfda_deploy.models.segformer import ASPPFusion
from tests import mit_reference as ref


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return ref.randomize_(module, seed)


def test_attention_with_spatial_reduction_equals_torch_multihead_attention():
    # keys/values from the map reduced 2x per side by a strided conv and LayerNorm (eps 1e-5), queries from
    # every token: nn.MultiheadAttention on (x, reduced, reduced) with q|k|v packed computes the same
    torch.manual_seed(0)
    attn = _randomized(Attention(dim=10, heads=2, sr_ratio=2, eps=1e-5))
    h, w = 6, 4
    x = torch.randn(3, h * w, 10)
    mha = nn.MultiheadAttention(10, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.kv.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
        grid = x.transpose(1, 2).reshape(3, 10, h, w)
        # the 2×2 stride-2 conv by hand: each reduced token is a weighted sum of its 2×2 patch
        patches = grid.unfold(2, 2, 2).unfold(3, 2, 2)  # [B,C,3,2,2,2]
        reduced = torch.einsum("bcijkl,ockl->bijo", patches, attn.sr.weight) + attn.sr.bias
        reduced = ref.layer_norm(reduced.reshape(3, -1, 10), attn.norm.weight, attn.norm.bias, 1e-5)
        expect = mha(x, reduced, reduced, need_weights=False)[0]
        assert torch.allclose(attn(x, h, w), expect, atol=1e-5)
        assert reduced.shape[1] == (h // 2) * (w // 2)


def test_attention_without_reduction_is_plain_self_attention():
    torch.manual_seed(1)
    attn = _randomized(Attention(dim=8, heads=1, sr_ratio=1, eps=1e-5))
    assert not hasattr(attn, "sr")
    x = torch.randn(2, 12, 8)
    sd = {f"a.{k}": v for k, v in attn.state_dict().items()}
    with torch.no_grad():
        assert torch.allclose(attn(x, 3, 4), ref.attention(x, 3, 4, sd, "a", 1, 1, 1e-5), atol=1e-5)


def test_mix_ffn_depthwise_conv_by_hand():
    # 3x3 depthwise, zero padding, bias: out[c,y,x] = b[c] + Σ_{dy,dx} w[c,dy,dx]·in[c,y+dy-1,x+dx-1]
    conv = DepthwiseConv(2)
    with torch.no_grad():
        conv.dwconv.weight.copy_(torch.arange(18, dtype=torch.float32).reshape(2, 1, 3, 3) / 10)
        conv.dwconv.bias.copy_(torch.tensor([0.5, -1.0]))
    h, w = 3, 4
    grid = torch.arange(24, dtype=torch.float32).reshape(1, 2, h, w)
    expect = torch.empty(1, 2, h, w)
    weight, bias = conv.dwconv.weight.detach(), conv.dwconv.bias.detach()
    for c in range(2):
        for y in range(h):
            for x in range(w):
                total = float(bias[c])
                for dy in range(3):
                    for dx in range(3):
                        yy, xx = y + dy - 1, x + dx - 1
                        if 0 <= yy < h and 0 <= xx < w:
                            total += float(weight[c, 0, dy, dx]) * float(grid[0, c, yy, xx])
                expect[0, c, y, x] = total
    tokens = grid.flatten(2).transpose(1, 2)
    with torch.no_grad():
        got = conv(tokens, h, w).transpose(1, 2).reshape(1, 2, h, w)
    assert torch.allclose(got, expect, atol=1e-5)
    assert expect[0, 0, 0, 0] == pytest.approx(0.5 + 0.4 * 0 + 0.5 * 1 + 0.7 * 4 + 0.8 * 5)  # corner, by hand


def test_daformer_fusion_against_the_reference():
    torch.manual_seed(2)
    fusion = _randomized(ASPPFusion(cin=16, width=6)).eval()
    assert [type(b).__name__ for b in fusion.aspp_modules] == ["ConvBNReLU"] + ["SeparableConvBNReLU"] * 3
    assert fusion.bottleneck.conv.bias is None and fusion.bottleneck.conv.kernel_size == (3, 3)
    sd = {f"f.{k}": v for k, v in fusion.state_dict().items()}
    x = torch.randn(2, 16, 21, 23)  # smaller than the dilations: padding does the work
    with torch.no_grad():
        assert torch.allclose(fusion(x), ref.daformer_fusion(x, sd, "f"), atol=1e-5)


@pytest.mark.parametrize("style, expect", [
    ("release", {"block": 1e-6, "stage": 1e-6, "embed": 1e-5, "reduction": 1e-5}),
    ("mmseg", {"block": 1e-6, "stage": 1e-6, "embed": 1e-6, "reduction": 1e-6}),
    ("transformers", {"block": 1e-5, "stage": 1e-5, "embed": 1e-5, "reduction": 1e-5}),
])
def test_layer_norm_eps_per_place(style, expect):
    mit = MixVisionTransformer("b0", style)
    places = {"embed": mit.patch_embed1.norm, "reduction": mit.block1[0].attn.norm, "block": mit.block3[1].norm2,
              "stage": mit.norm4}
    assert {k: m.eps for k, m in places.items()} == expect
    eps = {m.eps for m in mit.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == set(expect.values())


def test_models_follow_the_contract_at_an_odd_input_size():
    torch.manual_seed(3)
    model = ref.randomize_(build_model("daformer_mitb0", 19), 3)
    sd = {k.replace("decode_head.classifier.", "decode_head.conv_seg."): v for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        ref.assert_matches(logits, ref.logits(ref.daformer_head(ref.mit(x, sd, "b0"), sd), x))
    assert feats.shape == (1, model.feature_channels, 12, 18) and model.output_stride == 4
    assert model.align_corners is False
    head = {id(p) for p in model.head_parameters()}
    for name, p in model.named_parameters():
        assert (id(p) in head) == name.startswith("decode_head."), name
    widths = {n: build_model(n, 19).feature_channels for n in ("segformer_b0", "segformer_b1", "segformer_b2")}
    assert widths == {"segformer_b0": 256, "segformer_b1": 256, "segformer_b2": 768}


def test_bad_model_options_are_one_line():
    with pytest.raises(SfdaError, match="unknown head_style 'timm'"):
        build_model("segformer_b0", 19, head_style="timm")
    with pytest.raises(SfdaError, match="unknown norm_eps"):
        build_model("daformer_mitb0", 19, norm_eps="1e-6")
