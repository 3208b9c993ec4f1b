"""Deterministic training batches: which images and which crop, as a function of the iteration.

Iteration ``t`` of a stage draws the global slots ``t·B·W … (t+1)·B·W − 1`` (B images per process, W
processes) from an endless sequence of per-epoch permutations of the stream's indices, each seeded
by (seed, stream, epoch); process ``r`` takes the slots ``r·B … r·B+B−1`` (DistributedSampler's
disjoint split). Crop offsets and flips are seeded by (seed, stream, t, slot). Nothing depends on
how many iterations ran before, so ``--resume`` needs no data-loader state to continue exactly.
The loader owns a seeded generator (creating its iterator draws a base seed: never from the global RNG),
and ``seed_iteration`` re-seeds the process RNGs at each iteration for what draws from them inside a step
(``Dropout2d`` masks in a training forward), so those draws are a pure function of the iteration too.
"""
from __future__ import annotations

import random
import zlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def seed_iteration(seed: int, stage_index: int, t: int, rank: int = 0) -> None:
    """Seed torch (CPU and CUDA), NumPy and ``random`` from (seed, stage, iteration, rank).

    Model-side random ops take no generator (``nn.Dropout2d`` draws from torch's global RNG), so the
    loop calls this before each iteration: a resumed run draws the same masks as an uninterrupted one
    whatever ran before (an evaluation, a DataLoader, a set-up), and ranks draw different ones.
    """
    s = _seed(seed, "process", stage_index, t, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def iteration_indices(subset: Sequence[int], t: int, batch: int, seed: int, stream: str,
                      rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """``[(dataset index, crop seed)] * batch`` for process ``rank`` at iteration ``t``."""
    n = len(subset)
    out, perms = [], {}
    for j in range(batch):
        k = (t * world + rank) * batch + j
        epoch = k // n
        if epoch not in perms:
            g = torch.Generator().manual_seed(_seed(seed, stream, epoch))
            perms[epoch] = torch.randperm(n, generator=g).tolist()
        out.append((int(subset[perms[epoch][k % n]]), _seed(seed, stream, "crop", t, rank, j)))
    return out


def random_crop(item: dict, crop: tuple[int, int], crop_seed: int, flip: float) -> dict:
    """Crop ``image`` ``[3,H,W]`` uint8 (and ``label`` ``[H,W]``) to ``crop``, padding with 0 / 255."""
    g = torch.Generator().manual_seed(crop_seed)
    image, label = item["image"], item.get("label")
    ch, cw = crop
    h, w = image.shape[-2:]
    if h < ch or w < cw:  # pad bottom/right: 0 for pixels, ignore for labels
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = F.pad(image, (0, pw, 0, ph), value=0)
        if label is not None:
            label = F.pad(label, (0, pw, 0, ph), value=255)
        h, w = image.shape[-2:]
    y = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    x = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    do_flip = bool(torch.rand((), generator=g) < flip)
    out = dict(item)
    image = image[:, y:y + ch, x:x + cw]
    out["image"] = image.flip(-1) if do_flip else image
    if label is not None:
        label = label[y:y + ch, x:x + cw]
        out["label"] = label.flip(-1) if do_flip else label
    return out


class _Cropped(Dataset):
    def __init__(self, dataset, crop, flip, keep_labels):
        self.dataset, self.crop, self.flip, self.keep_labels = dataset, tuple(crop), flip, keep_labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, crop_seed = key
        item = dict(self.dataset[index])
        if not self.keep_labels:
            item.pop("label", None)  # source-free: adaptation steps never see target labels
        return random_crop(item, self.crop, crop_seed, self.flip)


class _Schedule:
    """Batch sampler: iteration ``start`` … ``stop − 1`` of one stream."""

    def __init__(self, subset, start, stop, batch, seed, stream, rank, world):
        self.args = (subset, batch, seed, stream, rank, world)
        self.start, self.stop = start, stop

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __iter__(self):
        subset, batch, seed, stream, rank, world = self.args
        for t in range(self.start, self.stop):
            yield iteration_indices(subset, t, batch, seed, stream, rank, world)


def stream_loader(dataset, subset, *, start: int, stop: int, batch: int, crop, flip: float, seed: int,
                  stream: str, keep_labels: bool, workers: int, rank: int = 0, world: int = 1,
                  pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding one collated batch per iteration ``start … stop−1``."""
    return DataLoader(_Cropped(dataset, crop, flip, keep_labels),
                      batch_sampler=_Schedule(subset, start, stop, batch, seed, stream, rank, world),
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
                      generator=torch.Generator().manual_seed(_seed(seed, stream, "loader", rank)))
