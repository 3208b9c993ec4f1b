"""Mixing: ClassMix (LDBE: image i onto image (i+1) mod B; ATP: easy i onto hard i), HIAST's paste.

Pure tensor functions; randomness only through an explicit ``torch.Generator``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def classmix_masks(labels: Tensor, generator: Optional[torch.Generator] = None, *, batch_classes: bool = False,
                   round_up: bool = False) -> Tensor:
    """Per image, the pixels of a random half of its classes.

    LDBE (defaults): ``⌊n/2⌋`` of the ``n`` classes present in the image. ATP/DACS
    (``get_class_masks``): ``batch_classes=True`` draws from the classes of the **whole batch**
    (``torch.unique(labels)``, a DACS quirk) and ``round_up=True`` takes ``⌈n/2⌉`` of them.

    Args:
        labels: int64 ``[B,H,W]``.
        generator: draws (CPU or on the labels' device).

    Returns:
        bool ``[B,H,W]``.
    """
    masks = []
    for lab in labels:
        classes = (labels if batch_classes else lab).unique()
        n = classes.numel()
        device = generator.device if generator is not None else "cpu"
        perm = torch.randperm(n, generator=generator, device=device).to(classes.device)
        chosen = classes[perm][: (n + n % 2) // 2 if round_up else n // 2]
        masks.append(torch.isin(lab, chosen))
    return torch.stack(masks)


def paste(masks: Tensor, foreground: Tensor, background: Tensor) -> Tensor:
    """``foreground`` where ``masks``, else ``background`` (ATP: easy image i onto hard image i).

    Args:
        masks: bool ``[B,H,W]``.
        foreground / background: ``[B,C,H,W]`` or ``[B,H,W]``, same shape.
    """
    m = masks if foreground.dim() == masks.dim() else masks.unsqueeze(1)
    return torch.where(m, foreground, background)


def mix_with_next(x: Tensor, masks: Tensor) -> Tensor:
    """``out_i = x_i`` where ``masks_i``, else ``x_{(i+1) mod B}`` (LDBE's ``generate_unsup_data``).

    Image ``i``'s chosen classes are pasted onto image ``(i+1) mod B``.

    Args:
        x: ``[B,...]`` with ``...`` = ``[C,H,W]`` (images, logits) or ``[H,W]`` (labels, confidences).
        masks: bool ``[B,H,W]``.
    """
    return paste(masks, x, x.roll(-1, dims=0))


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
