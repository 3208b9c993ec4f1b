"""The released key layouts of MiT models (SegFormer, DAFormer) mapped onto the registry's models.

Layouts (``detect``): DAFormer/ATP (mmseg 0.x: ``backbone.block1.0.attn.q``,
``decode_head.embed_layers.0.proj``, ``decode_head.fuse_layer.aspp_modules``, ``decode_head.conv_seg``),
NVlabs SegFormer (``linear_c4`` … ``linear_c1``, ``linear_fuse``, ``linear_pred``; its unused
``conv_seg`` is dropped), mmsegmentation's SegFormer (``backbone.layers.0.1.0.attn.attn.in_proj_weight``,
``ffn.layers.0`` as 1×1 convs, ``decode_head.convs``, ``fusion_conv``, ``conv_seg``) and Hugging Face
transformers (``segformer.encoder.block.0.0.attention.self.query``, key and value apart,
``decode_head.linear_c.0.proj``, ``batch_norm``, ``classifier``). The registry's own names follow the
NVlabs/DAFormer backbone, so those two map by name; the classifier is ``decode_head.classifier``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.models.mit import MIT_SPECS


@dataclass(frozen=True)
class Layout:
    """A released key layout: its name, the model family it holds, the architecture options it implies."""

    name: str
    family: str                      # segformer | daformer
    marker: str                      # a key only this layout has
    arch_kwargs: dict = field(default_factory=dict)


LAYOUTS = (
    Layout("DAFormer/ATP (mmseg 0.x)", "daformer", "decode_head.embed_layers.0.proj.weight"),
    Layout("NVlabs SegFormer", "segformer", "decode_head.linear_c1.proj.weight"),
    Layout("mmsegmentation SegFormer", "segformer", "backbone.layers.0.0.projection.weight",
           {"head_style": "mmseg", "norm_eps": "mmseg"}),
    Layout("Hugging Face transformers SegFormer", "segformer",
           "segformer.encoder.patch_embeddings.0.proj.weight", {"norm_eps": "transformers"}),
    Layout("sfda-deploy", "any", "decode_head.classifier.weight"),
)


def detect(state: dict[str, torch.Tensor]) -> Layout | None:
    """The layout whose marker key the file holds, or None (then the strict load names the keys)."""
    return next((layout for layout in LAYOUTS if layout.marker in state), None)


def _rename(state: dict, rules) -> dict:
    """Apply the first matching ``(pattern, replacement)`` to each key; other keys stay."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                key = new
                break
        out[key] = value
    return out


def _stage(m: re.Match) -> str:
    return str(int(m.group(1)) + 1)


RELEASE_HEAD = [(r"^decode_head\.(conv_seg|linear_pred)\.", "decode_head.classifier.")]

MMSEG_RULES = [
    (r"^backbone\.layers\.(\d+)\.0\.projection\.", lambda m: f"backbone.patch_embed{_stage(m)}.proj."),
    (r"^backbone\.layers\.(\d+)\.0\.norm\.", lambda m: f"backbone.patch_embed{_stage(m)}.norm."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.attn\.attn\.out_proj\.",
     lambda m: f"backbone.block{_stage(m)}.{m.group(2)}.attn.proj."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.0\.", lambda m: f"backbone.block{_stage(m)}.{m.group(2)}.mlp.fc1."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.1\.",
     lambda m: f"backbone.block{_stage(m)}.{m.group(2)}.mlp.dwconv.dwconv."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.4\.", lambda m: f"backbone.block{_stage(m)}.{m.group(2)}.mlp.fc2."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.", lambda m: f"backbone.block{_stage(m)}.{m.group(2)}."),
    (r"^backbone\.layers\.(\d+)\.2\.", lambda m: f"backbone.norm{_stage(m)}."),
] + RELEASE_HEAD

HF_RULES = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.", lambda m: f"backbone.patch_embed{_stage(m)}.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", lambda m: f"backbone.patch_embed{_stage(m)}."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", lambda m: f"backbone.norm{_stage(m)}."),
    (r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.(.*)$",
     lambda m: f"backbone.block{_stage(m)}.{m.group(2)}.{_hf_block_part(m.group(3))}"),
    (r"^decode_head\.linear_c\.(\d+)\.", lambda m: f"decode_head.linear_c{_stage(m)}."),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
]

HF_BLOCK_PARTS = (("layer_norm_1.", "norm1."), ("layer_norm_2.", "norm2."), ("attention.self.query.", "attn.q."),
                  ("attention.self.key.", "attn.k."), ("attention.self.value.", "attn.v."),
                  ("attention.self.sr.", "attn.sr."), ("attention.self.layer_norm.", "attn.norm."),
                  ("attention.output.dense.", "attn.proj."), ("mlp.dense1.", "mlp.fc1."), ("mlp.dense2.", "mlp.fc2."))


def _hf_block_part(rest: str) -> str:
    for old, new in HF_BLOCK_PARTS:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _merge_key_value(state: dict) -> dict:
    """Separate ``attn.k``/``attn.v`` → one ``attn.kv`` (keys first, values second: the released order)."""
    out = {}
    for key, value in state.items():
        if ".attn.k." in key:
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([value, state[key.replace(".attn.k.", ".attn.v.")]])
        elif ".attn.v." not in key or key.replace(".attn.v.", ".attn.k.") not in state:
            out[key] = value
    return out


def _split_in_proj(state: dict) -> dict:
    """mmseg's ``nn.MultiheadAttention`` packs q, k, v in ``in_proj_*`` → ``attn.q`` and ``attn.kv``;
    its 1×1-conv FFN weights ``[out,in,1,1]`` → linear ``[out,in]``."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(.*\.attn)\.attn\.in_proj_(weight|bias)$", key)
        if match:
            width = value.shape[0] // 3
            out[f"{match.group(1)}.q.{match.group(2)}"] = value[:width]
            out[f"{match.group(1)}.kv.{match.group(2)}"] = value[width:]
        elif re.search(r"\.mlp\.fc[12]\.weight$", key) and value.dim() == 4:
            out[key] = value.flatten(1)
        else:
            out[key] = value
    return out


def to_registry(state: dict[str, torch.Tensor], layout: Layout) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` in ``layout`` → the registry model's names; also the keys dropped as unused."""
    dropped = []
    if layout.name == "NVlabs SegFormer" and "decode_head.conv_seg.weight" in state:
        # BaseDecodeHead builds conv_seg, NVlabs' forward predicts with linear_pred: never trained
        dropped = [k for k in state if k.startswith("decode_head.conv_seg.")]
        state = {k: v for k, v in state.items() if k not in dropped}
    if layout.name.startswith("mmsegmentation"):
        return _split_in_proj(_rename(state, MMSEG_RULES)), dropped
    if layout.name.startswith("Hugging Face"):
        return _merge_key_value(_rename(state, HF_RULES)), dropped
    return _rename(state, RELEASE_HEAD), dropped


def variant_of(state: dict[str, torch.Tensor]) -> str | None:
    """The MiT variant (``b0`` … ``b5``) of registry-named weights, from stage widths and depths."""
    try:
        dims = tuple(int(state[f"backbone.patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5))
    except KeyError:
        return None
    depths = tuple(len({k.split(".")[2] for k in state if k.startswith(f"backbone.block{i}.")}) for i in range(1, 5))
    return next((name for name, spec in MIT_SPECS.items() if (spec.dims, spec.depths) == (dims, depths)), None)


def check_fits(state: dict[str, torch.Tensor], layout: Layout, arch: str, family: str, variant: str,
               source: str) -> None:
    """One line when the file holds another family or another MiT size than ``arch``."""
    if layout.family not in ("any", family):
        suggestion = f"{layout.family}_{'mit' if layout.family == 'daformer' else ''}{variant}"
        raise SfdaError(f"{source} holds a {layout.name} checkpoint ({layout.family}), not a {family} model: "
                        f"use --arch {suggestion} (or a file of the {family} layout)")
    found = variant_of(state)
    if found is not None and found != variant:
        spec = MIT_SPECS[found]
        raise SfdaError(f"{source} holds MiT-{found.upper()} weights (widths {'/'.join(map(str, spec.dims))}, "
                        f"depths {'/'.join(map(str, spec.depths))}) but --arch {arch} is MiT-{variant.upper()}: "
                        f"use --arch {arch[: -len(variant)]}{found}")
