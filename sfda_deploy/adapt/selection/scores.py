"""Label-free scores of a model's predictions on unlabelled target images (pure functions on tensors).

Every score is "higher is better":

* ``im_score``: information maximisation, H(mean prediction) − mean H(prediction): confident and
  diverse predictions score high; a model that predicts one class everywhere scores 0.
* ``snd_score``: soft neighbourhood density (Saito et al., ICCV 2021): the entropy of each sample's
  similarity distribution over its neighbours; well-clustered, not over-dispersed features score high.
* ``mix_score``: a MixVal-style probe (Hu et al., NeurIPS 2023), pixel-wise: the model sees
  ``λ·a + (1 − λ)·b`` (λ > 0.5) and should predict what it predicts on the dominant image ``a``; counted
  on the pixels where its predictions on ``a`` and ``b`` differ (MixVal's inter-cluster probe: the
  pixels that test the decision boundary).

Not a criterion but recorded beside them: ``marginal_kl`` (how far the class marginal drifted from the
source model's: always smallest at the source, so it cannot pick an adapted model) and the predicted-class
shares the collapse detector reads (``collapse.py``).
"""
from __future__ import annotations

import torch

from sfda_deploy.config_values import SELECTION_CRITERIA

CRITERIA = SELECTION_CRITERIA
MIX_LAMBDA = 0.55  # MixVal's inter-cluster mix: the dominant image barely dominates


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (natural log, 0·log 0 = 0) along ``dim``."""
    return -torch.special.xlogy(p, p).sum(dim)


def _pixel_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]`` logits → ``[B·H·W, C]`` float64 softmax probabilities."""
    c = logits.shape[1]
    return torch.softmax(logits.double(), dim=1).permute(0, 2, 3, 1).reshape(-1, c)


def im_score(logits: torch.Tensor) -> float:
    """Information maximisation: H(mean of p over all pixels) − mean over pixels of H(p).

    Args:
        logits: ``[B,C,H,W]``; p = softmax over C.
    Returns:
        the score in nats, in ``[0, ln C]``; higher is better.
    """
    p = _pixel_probs(logits)
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


def snd_score(features: torch.Tensor, temperature: float = 0.05) -> float:
    """Soft neighbourhood density of ``N`` samples.

    Rows are L2-normalised; S = F·Fᵀ / temperature; each row's softmax is taken over the other N − 1
    entries (the diagonal left out).

    Args:
        features: ``[N,D]``, N ≥ 2 (e.g. per-pixel class probabilities of a pixel subsample).
        temperature: the similarity temperature (the paper's 0.05).
    Returns:
        the mean over rows of that softmax's entropy (nats); higher is better.
    """
    if features.shape[0] < 2:
        raise ValueError(f"snd_score needs at least 2 samples, got {features.shape[0]}")
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sim = f @ f.T / temperature
    sim.fill_diagonal_(float("-inf"))
    return float(_entropy(torch.softmax(sim, dim=1)).mean())


def mix_score(pred_mix: torch.Tensor, pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Agreement of the prediction on a mixed image with the prediction on its dominant image.

    Args:
        pred_mix / pred_a / pred_b: class indices of the same shape (e.g. ``[B,H,W]``) on the mix
            ``λ·a + (1 − λ)·b`` and on ``a`` and ``b`` alone.
    Returns:
        the share of pixels with ``pred_a ≠ pred_b`` where ``pred_mix == pred_a``; 0.0 when the
        model predicts the same on ``a`` and ``b`` everywhere (nothing it tells apart). Higher is better.
    """
    differ = pred_a != pred_b
    n = int(differ.sum())
    if n == 0:
        return 0.0
    return float((pred_mix[differ] == pred_a[differ]).sum()) / n


def class_marginal(logits: torch.Tensor) -> torch.Tensor:
    """``[C]`` float64 mean softmax probability over all pixels of ``[B,C,H,W]`` logits."""
    return _pixel_probs(logits).mean(0)


def class_shares(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C]`` float64 share of the pixels of ``pred`` (class indices, any shape) predicted as each class."""
    counts = torch.bincount(pred.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    return counts / max(int(pred.numel()), 1)


def marginal_kl(marginal: torch.Tensor, reference: torch.Tensor, eps: float = 1e-12) -> float:
    """KL(marginal ‖ reference) in nats, both ``[C]`` distributions (``eps`` keeps log finite)."""
    m, r = marginal.double(), reference.double()
    return float((torch.special.xlogy(m, m) - m * torch.log(r + eps)).sum())
