"""Two CPU processes (gloo) train a few iterations: same weights on both ranks, rank-0 outputs only."""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run_dir, out_dir):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "SFDA_DIST_BACKEND": "gloo"})
    torch.set_num_threads(1)
    from pathlib import Path

    from sfda_deploy.adapt import distributed as D
    from sfda_deploy.adapt import loop as L
    from sfda_deploy.adapt.methods import get_method
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model
    from tests.tiny_data import TinyDataset

    r, w, _ = D.init()
    torch.manual_seed(0)
    method = get_method("supervised")
    cfg = method.make_config({"checkpoint_every": 0}, iters=3, batch=1, crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    job = L.LoopJob(method=method, cfg=cfg, stages=method.stages, student=model,
                    meta=ModelMeta(arch="tiny", input_size=(32, 32)), train_set=TinyDataset(n=4),
                    run_dir=Path(run_dir) if r == 0 else None, device=torch.device("cpu"), seed=0,
                    progress=False, rank=r, world=w)
    L.run(job)
    torch.save(model.state_dict(), Path(out_dir) / f"rank{r}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(run_dir), str(out_dir)), nprocs=2, join=True)
    a = torch.load(out_dir / "rank0.pt", weights_only=True)
    b = torch.load(out_dir / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # averaged gradients + broadcast buffers keep ranks identical
    saved = load_file(str(run_dir / "model.safetensors"))
    assert torch.equal(saved["classifier.weight"], a["classifier.weight"])
    torch.manual_seed(0)
    from sfda_deploy.models import build_model

    assert not torch.equal(build_model("tiny", num_classes=19).classifier.weight, a["classifier.weight"])
