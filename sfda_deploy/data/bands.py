"""A tiny labelled dataset held in memory: vertical bands of classes coloured by the class palette (+ noise).

Items follow docs/contracts.md ("Images, labels, batches"). For checks and measurement scripts that need a few
labelled images in a second without files on disk (the tests, ``scripts/blackbox_distill.py``); the synthetic
benchmark's scenes are ``data.synthetic``.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from sfda_deploy.classes import get_class_set


class TinyDataset(Dataset):
    """``n`` images ``[3,H,W]`` uint8 of vertical class bands coloured by the class palette (+ noise).

    ``style`` shifts the colours (a crude domain shift); ``labelled=False`` drops ``label``.
    """

    def __init__(self, n=6, size=(48, 64), labelled=True, seed=0, class_set="cityscapes19", style=0.0,
                 classes=(0, 1, 2, 8, 10, 13)):
        g = torch.Generator().manual_seed(seed)
        pal = torch.tensor(get_class_set(class_set).palette, dtype=torch.float32)
        self.class_set, self.labelled, self.items = class_set, labelled, []
        h, w = size
        for i in range(n):
            cuts = sorted(torch.randint(4, w - 4, (3,), generator=g).tolist())
            label = torch.empty(h, w, dtype=torch.int64)
            picks = torch.tensor(classes)[torch.randperm(len(classes), generator=g)[:4]]
            edges = [0, *cuts, w]
            for k in range(4):
                label[:, edges[k]:edges[k + 1]] = picks[k]
            label[: h // 8] = 255
            img = pal[label.clamp(max=pal.shape[0] - 1)].permute(2, 0, 1)
            img = img * (1 - style) + style * 128 + 10 * torch.randn(3, h, w, generator=g)
            self.items.append({"image": img.clamp(0, 255).to(torch.uint8), "label": label,
                               "name": f"img{i}", "index": i})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = dict(self.items[i])
        if not self.labelled:
            item.pop("label")
        return item
