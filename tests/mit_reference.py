"""An independent, functional reference of MiT, SegFormer and DAFormer, written from the papers and the
released configs for the tests: plain tensor maths on a state dict in the RELEASED key names, apart
from ``sfda_deploy.models`` (no module of the package is used). LayerNorm, GELU, softmax and eval-mode
BatchNorm are computed by hand; attention head by head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (widths, depths) per MiT size, heads 1/2/5/8, spatial reduction 8/4/2/1, MLP ratio 4 (SegFormer, Table 6).
SIZES = {"b0": ((32, 64, 160, 256), (2, 2, 2, 2)), "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
         "b2": ((64, 128, 320, 512), (3, 4, 6, 3)), "b5": ((64, 128, 320, 512), (3, 6, 40, 3))}
HEADS, REDUCTIONS = (1, 2, 5, 8), (8, 4, 2, 1)
RELEASE_EPS = {"block": 1e-6, "stage": 1e-6, "embed": 1e-5, "reduction": 1e-5}


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def batch_norm_eval(x, sd, p, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - sd[p + ".running_mean"].view(shape)) / torch.sqrt(sd[p + ".running_var"].view(shape) + eps)
            * sd[p + ".weight"].view(shape) + sd[p + ".bias"].view(shape))


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def linear(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def to_map(tokens, h, w):
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def to_tokens(m):
    return m.flatten(2).transpose(1, 2)


def softmax(s):
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def attention(x, h, w, sd, p, heads, reduction, eps):
    """Efficient self-attention: keys/values from the map reduced by a ``reduction``-strided conv + LN."""
    c = x.shape[-1]
    d = c // heads
    q = linear(x, sd, p + ".q")
    context = x
    if reduction > 1:
        reduced = F.conv2d(to_map(x, h, w), sd[p + ".sr.weight"], sd[p + ".sr.bias"], stride=reduction)
        context = layer_norm(to_tokens(reduced), sd[p + ".norm.weight"], sd[p + ".norm.bias"], eps)
    kv = linear(context, sd, p + ".kv")
    k, v = kv[..., :c], kv[..., c:]
    out = torch.empty_like(q)
    for head in range(heads):
        part = slice(head * d, (head + 1) * d)
        out[..., part] = softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d)) @ v[..., part]
    return linear(out, sd, p + ".proj")


def mix_ffn(x, h, w, sd, p):
    hidden = linear(x, sd, p + ".fc1")
    conv = F.conv2d(to_map(hidden, h, w), sd[p + ".dwconv.dwconv.weight"], sd[p + ".dwconv.dwconv.bias"],
                    padding=1, groups=hidden.shape[-1])
    return linear(gelu(to_tokens(conv)), sd, p + ".fc2")


def mit(x, sd, size, eps=RELEASE_EPS, prefix="backbone."):
    """The four stage maps of MiT-``size`` on ``x``; ``sd`` in the NVlabs/DAFormer names."""
    dims, depths = SIZES[size]
    outs = []
    for i in range(4):
        p = f"{prefix}patch_embed{i + 1}"
        m = F.conv2d(x, sd[p + ".proj.weight"], sd[p + ".proj.bias"], stride=4 if i == 0 else 2,
                     padding=3 if i == 0 else 1)
        h, w = m.shape[-2:]
        t = layer_norm(to_tokens(m), sd[p + ".norm.weight"], sd[p + ".norm.bias"], eps["embed"])
        for j in range(depths[i]):
            b = f"{prefix}block{i + 1}.{j}"
            t = t + attention(layer_norm(t, sd[b + ".norm1.weight"], sd[b + ".norm1.bias"], eps["block"]), h, w, sd,
                              b + ".attn", HEADS[i], REDUCTIONS[i], eps["reduction"])
            t = t + mix_ffn(layer_norm(t, sd[b + ".norm2.weight"], sd[b + ".norm2.bias"], eps["block"]), h, w, sd,
                            b + ".mlp")
        t = layer_norm(t, sd[f"{prefix}norm{i + 1}.weight"], sd[f"{prefix}norm{i + 1}.bias"], eps["stage"])
        outs.append(x := to_map(t, h, w))
    return outs


def conv_bn_relu(x, sd, p, padding=0, dilation=1, groups=1):
    return torch.relu(batch_norm_eval(F.conv2d(x, sd[p + ".conv.weight"], None, padding=padding, dilation=dilation,
                                               groups=groups), sd, p + ".bn"))


def embed(x, sd, p, size):
    h, w = x.shape[-2:]
    return F.interpolate(to_map(linear(to_tokens(x), sd, p), h, w), size=size, mode="bilinear", align_corners=False)


def daformer_fusion(x, sd, p="decode_head.fuse_layer"):
    """Separable ASPP (1×1; 3×3 dilated 6/12/18: depthwise then pointwise) → 3×3 bottleneck."""
    branches = [conv_bn_relu(x, sd, f"{p}.aspp_modules.0")]
    for k, d in enumerate((6, 12, 18), 1):
        dw = conv_bn_relu(x, sd, f"{p}.aspp_modules.{k}.depthwise_conv", padding=d, dilation=d, groups=x.shape[1])
        branches.append(conv_bn_relu(dw, sd, f"{p}.aspp_modules.{k}.pointwise_conv"))
    return conv_bn_relu(torch.cat(branches, 1), sd, f"{p}.bottleneck", padding=1)


def daformer_head(levels, sd):
    size = levels[0].shape[-2:]
    fused = daformer_fusion(torch.cat([embed(x, sd, f"decode_head.embed_layers.{i}.proj", size)
                                       for i, x in enumerate(levels)], 1), sd)
    return F.conv2d(fused, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def mmseg_segformer_head(levels, sd):
    size = levels[0].shape[-2:]
    outs = [F.interpolate(conv_bn_relu(x, sd, f"decode_head.convs.{i}"), size=size, mode="bilinear",
                          align_corners=False) for i, x in enumerate(levels)]
    fused = conv_bn_relu(torch.cat(outs, 1), sd, "decode_head.fusion_conv")
    return F.conv2d(fused, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def logits(head_out, x):
    return F.interpolate(head_out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def assert_matches(got: torch.Tensor, ref: torch.Tensor, agreement: float = 0.9999, rel: float = 1e-3) -> None:
    """The targets: argmax agreement ≥ 99.99 %, max |Δ| ≤ 1e-3 of the logit scale (max |ref|)."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = ref.abs().max()
    delta = (got - ref).abs().max()
    agree = (got.argmax(1) == ref.argmax(1)).float().mean()
    assert delta <= rel * scale, f"max |Δ| {delta:.3g} > {rel} × {scale:.3g}"
    assert agree >= agreement, f"argmax agreement {agree:.6f}"


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values for what a fresh model leaves at 1/0: norm affines, biases, BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.1 * noise)
            elif t.dim() == 1:  # LayerNorm / BatchNorm weights
                t.copy_(1 + 0.2 * noise)
    return model.eval()
