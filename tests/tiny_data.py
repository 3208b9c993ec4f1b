"""The tiny in-memory dataset of the tests (``sfda_deploy.data.bands``) and the patch that makes adapt read it."""
from __future__ import annotations

from sfda_deploy.data.bands import TinyDataset

__all__ = ["TinyDataset", "patch_datasets"]


def patch_datasets(monkeypatch, n=6, size=(48, 64), labelled=True, empty=False, class_set=None, style=0.0):
    """Make ``sfda_deploy.commands.adapt.open_dataset`` return TinyDatasets (train/val share the style)."""
    import sfda_deploy.commands.adapt as api

    def fake(target, data_root, split, cs):
        if empty:
            return TinyDataset(n=0)
        return TinyDataset(n=n, size=size, labelled=labelled, seed=0 if split == "train" else 1,
                           class_set=class_set or cs, style=style)

    monkeypatch.setattr(api, "open_dataset", fake)
