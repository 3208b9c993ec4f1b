"""Running the label-free scores of ``scores.py`` on a model: a fixed target sample through the network
(plain and mixed images) → every criterion, the class marginal and the predicted-class shares."""
from __future__ import annotations

from typing import Sequence

import torch

from sfda_deploy.adapt.selection.scores import MIX_LAMBDA, class_marginal, class_shares, im_score, mix_score, snd_score


def sample_indices(available: int, count: int, seed: int) -> list[int]:
    """``min(count, available)`` indices of a seeded permutation, sorted (the same at every point)."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(available, generator=g)[:count].tolist())


def _predict(model, meta, x: torch.Tensor, stride: int) -> torch.Tensor:
    """``[1,3,H,W]`` float 0-255 → logits ``[1,C,h,w]`` read at the network's output stride."""
    return model(meta.normalize(x)).float()[:, :, ::stride, ::stride]


def _mix_probe(model, meta, floats: list, preds: list, stride: int) -> tuple[torch.Tensor, ...]:
    """Predictions on ``λ·a + (1 − λ)·b`` for each image a and the next one b, with those on a and b."""
    mixed, on_a, on_b = [], [], []
    for i, a in enumerate(floats):
        j = (i + 1) % len(floats)
        b, pred_b = floats[j], preds[j]
        if b.shape != a.shape:  # folders of mixed sizes: b resized to a's size
            b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
            pred_b = _predict(model, meta, b, stride).argmax(1).reshape(-1)
        mixed.append(_predict(model, meta, MIX_LAMBDA * a + (1 - MIX_LAMBDA) * b, stride).argmax(1).reshape(-1))
        on_a.append(preds[i])
        on_b.append(pred_b)
    return torch.cat(mixed), torch.cat(on_a), torch.cat(on_b)


@torch.no_grad()
def score_model(model, meta, images: Sequence[torch.Tensor], device, snd_pixels: int, seed: int) -> dict:
    """All label-free scores of ``model`` on ``images`` (uint8 ``[3,H,W]`` RGB each, at least 2).

    Logits are read at the network's output stride (what it resolves; the rest is interpolation); SND
    takes the class probabilities of ``snd_pixels`` of those pixels, drawn with ``seed``.
    Returns:
        ``{"scores": {criterion: float}, "marginal": [C] tensor, "shares": [C] tensor}``.
    """
    was_training = model.training
    model.eval()
    stride = int(getattr(model, "output_stride", 1) or 1)
    floats = [img.to(device).float()[None] for img in images]
    rows, preds = [], []
    for x in floats:
        logits = _predict(model, meta, x, stride)
        rows.append(logits.reshape(logits.shape[1], -1).T)
        preds.append(logits.argmax(1).reshape(-1))
    mixed, pred_a, pred_b = _mix_probe(model, meta, floats, preds, stride)
    model.train(was_training)
    rows = torch.cat(rows).cpu()           # [N, C]: every scored pixel
    flat = rows.T[None, :, :, None]        # [1, C, N, 1]: the [B,C,H,W] layout of the scores
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:snd_pixels]
    scores = {"im": im_score(flat), "snd": snd_score(torch.softmax(rows[pick].double(), 1)),
              "mix": mix_score(mixed, pred_a, pred_b)}
    return {"scores": scores, "marginal": class_marginal(flat), "shares": class_shares(torch.cat(preds).cpu(),
                                                                                       rows.shape[1])}
