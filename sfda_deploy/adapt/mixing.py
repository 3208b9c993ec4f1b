"""Mixing used by the peer methods: LDBE's ClassMix (image i onto image (i+1) mod B), HIAST's paste.

Pure tensor functions; randomness only through an explicit ``torch.Generator``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def classmix_masks(labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per image, the pixels of a random half (``⌊n/2⌋`` of its ``n`` present classes) of its classes.

    Args:
        labels: int64 ``[B,H,W]``.

    Returns:
        bool ``[B,H,W]``.
    """
    masks = []
    for lab in labels:
        classes = lab.unique()
        perm = torch.randperm(classes.numel(), generator=generator, device="cpu").to(classes.device)
        chosen = classes[perm][: classes.numel() // 2]
        masks.append(torch.isin(lab, chosen))
    return torch.stack(masks)


def mix_with_next(x: Tensor, masks: Tensor) -> Tensor:
    """``out_i = x_i`` where ``masks_i``, else ``x_{(i+1) mod B}`` (LDBE's ``generate_unsup_data``).

    Image ``i``'s chosen classes are pasted onto image ``(i+1) mod B``.

    Args:
        x: ``[B,...]`` with ``...`` = ``[C,H,W]`` (images, logits) or ``[H,W]`` (labels, confidences).
        masks: bool ``[B,H,W]``.
    """
    m = masks if x.dim() == masks.dim() else masks.unsqueeze(1)
    return torch.where(m, x, x.roll(-1, dims=0))


def paste_classes(image: Tensor, label: Tensor, src_image: Tensor, src_label: Tensor,
                  classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """HPLA paste: copy **all** pixels of ``src_label`` whose class is in ``classes``.

    Args:
        image: ``[C,H,W]`` destination; label: ``[H,W]``.
        src_image, src_label: the donor at the same size.
        classes: 1-D int64, the hard classes.

    Returns:
        ``(image, label, pasted_mask [H,W] bool)``, new tensors.
    """
    mask = torch.isin(src_label, classes.to(src_label.device))
    return torch.where(mask, src_image, image), torch.where(mask, src_label, label), mask
