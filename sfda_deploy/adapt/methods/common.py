"""Small pieces the self-training recipes share: frozen-model probabilities, target-set passes, RNG."""
from __future__ import annotations

import random
from typing import Iterator

import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def probs_of(model: torch.nn.Module, state, images: torch.Tensor, features: bool = False):
    """Softmax of a frozen network on float 0-255 images ``[B,3,H,W]`` → ``[B,C,H,W]`` (float32).

    With ``features=True`` also returns the deepest features ``[B,F,h,w]``.
    """
    out = model(state.normalize(images), return_features=features)
    if features:
        logits, feats = out
        return logits.float().softmax(dim=1), feats.float()
    return out.float().softmax(dim=1)


def target_pass(ctx, features: bool = False) -> Iterator:
    """``ctx.model``'s probabilities ``[1,C,H,W]`` (and features) on each full target image, in order."""
    from sfda_deploy.progress import progress

    loader = DataLoader(ctx.dataset, batch_size=1, shuffle=False, num_workers=0)
    for item in progress(loader, desc="target pass", disable=not ctx.progress, unit="batch"):
        images = item["image"].to(ctx.device).float()
        yield probs_of(ctx.model, ctx.meta, images, features)


def python_rng(state) -> random.Random:
    """A ``random.Random`` seeded from the stage's checkpointed generator (resume repeats it)."""
    return random.Random(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=state.generator,
                                           device=state.generator.device)))


def cpu_generator(state) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from the stage's generator (for CPU-side draws on any device)."""
    return torch.Generator().manual_seed(python_rng(state).randrange(2 ** 31))
