"""Mix Transformer (MiT-B0 … B5), the SegFormer encoder (Xie et al. 2021), in plain PyTorch.

Four stages; each is an overlapping patch embedding (strided conv → LayerNorm), ``depth`` blocks
(pre-norm efficient self-attention whose keys/values come from a spatially reduced map, then a Mix-FFN:
linear → 3×3 depthwise conv → GELU → linear) and a LayerNorm. Outputs at strides 4, 8, 16 and 32.

Module and parameter names follow the released code (NVlabs SegFormer, DAFormer: ``patch_embed1``,
``block1.0.attn.q``, ``attn.kv``, ``attn.sr``, ``mlp.dwconv.dwconv``, ``norm1`` …), so those
checkpoints load by name. LayerNorm eps differs between the releases (``NORM_EPS``): a model imported
from another layout keeps the eps its weights were trained with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sfda_deploy.errors import SfdaError


@dataclass(frozen=True)
class MiTSpec:
    """Widths, heads, depths and spatial-reduction ratios of the four stages."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


WIDE = (64, 128, 320, 512)
MIT_SPECS = {
    "b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": MiTSpec(WIDE, (2, 2, 2, 2)),
    "b2": MiTSpec(WIDE, (3, 4, 6, 3)),
    "b3": MiTSpec(WIDE, (3, 4, 18, 3)),
    "b4": MiTSpec(WIDE, (3, 8, 27, 3)),
    "b5": MiTSpec(WIDE, (3, 6, 40, 3)),
}

# LayerNorm eps per place, as each release computes it:
# - release: NVlabs SegFormer and DAFormer/ATP: 1e-6 in the blocks and the stage norms, torch's default
#   1e-5 in the patch embeddings and the attention's spatial-reduction norm;
# - mmseg: mmsegmentation's MiT port passes one norm config (1e-6) to every LayerNorm;
# - transformers: Hugging Face's Segformer builds every LayerNorm with torch's default (1e-5).
NORM_EPS = {
    "release": {"block": 1e-6, "stage": 1e-6, "embed": 1e-5, "reduction": 1e-5},
    "mmseg": {"block": 1e-6, "stage": 1e-6, "embed": 1e-6, "reduction": 1e-6},
    "transformers": {"block": 1e-5, "stage": 1e-5, "embed": 1e-5, "reduction": 1e-5},
}


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B,h·w,C]`` → ``[B,C,h,w]``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B,C,h,w]`` → ``[B,h·w,C]``."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Conv with kernel ``patch`` > stride (padding ``patch // 2``: neighbouring patches overlap) → LayerNorm."""

    def __init__(self, cin: int, dim: int, patch: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride, patch // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``[B,cin,H,W]`` → tokens ``[B,h·w,dim]``, h, w."""
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), h, w


class Attention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map reduced ``sr_ratio``× per side
    (a ``sr_ratio``-strided conv, then LayerNorm): cost ``N·N/sr²`` instead of ``N²``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, eps: float):
        super().__init__()
        if dim % heads:
            raise SfdaError(f"MiT attention width {dim} is not a multiple of its {heads} heads: check the variant")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys in the first half of the outputs, values in the second
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Tokens ``[B,N,C]`` (N = h·w) → ``[B,N,C]``."""
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)  # [B,heads,N,d]
        context = x
        if self.sr_ratio > 1:
            context = self.norm(map_to_tokens(self.sr(tokens_to_map(x, h, w))))
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 × [B,heads,M,d]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√d)·v, fused where the device has a kernel
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    """3×3 depthwise conv on tokens: the Mix-FFN's position information (no position embedding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """linear ``dim → hidden`` → 3×3 depthwise conv → GELU → linear ``hidden → dim``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (stochastic depth
    is a training regulariser of the released recipes; it is not used here)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, eps: dict[str, float]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps["block"])
        self.attn = Attention(dim, heads, sr_ratio, eps["reduction"])
        self.norm2 = nn.LayerNorm(dim, eps=eps["block"])
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class MixVisionTransformer(nn.Module):
    """MiT encoder: ``forward(x)`` → the four stage maps ``[B,dims[i],H/2^(i+2),W/2^(i+2)]``.

    Args:
        variant: ``b0`` … ``b5`` (``MIT_SPECS``).
        norm_eps: ``release`` | ``mmseg`` | ``transformers`` (``NORM_EPS``).
    """

    def __init__(self, variant: str = "b0", norm_eps: str = "release"):
        super().__init__()
        if variant not in MIT_SPECS:
            raise SfdaError(f"unknown MiT variant '{variant}': choose one of {', '.join(MIT_SPECS)}")
        if norm_eps not in NORM_EPS:
            raise SfdaError(f"unknown norm_eps '{norm_eps}': choose one of {', '.join(NORM_EPS)}")
        spec = MIT_SPECS[variant]
        eps = NORM_EPS[norm_eps]
        self.dims = spec.dims
        cin = 3
        for i, (dim, depth, heads, sr) in enumerate(zip(spec.dims, spec.depths, spec.heads, spec.sr_ratios), 1):
            patch, stride = (7, 4) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(cin, dim, patch, stride, eps["embed"]))
            setattr(self, f"block{i}", nn.ModuleList(Block(dim, heads, sr, spec.mlp_ratio, eps)
                                                      for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=eps["stage"]))
            cin = dim
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), h, w)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """The released initialisation: truncated normal (σ 0.02) linears, fan-out normal convs, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
