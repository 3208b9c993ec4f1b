"""Black-box sources: the distillation loss by hand, the ONNX teacher, stage D through the CLI, bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sfda_deploy.adapt.losses import distillation_loss
from sfda_deploy.checkpoint import load_model
from sfda_deploy.metadata import ModelMeta, attach_to_onnx
from sfda_deploy.models import build_model
from tests.conftest import assert_user_error
from tests.tiny_data import TinyDataset, patch_datasets

LN3 = math.log(3.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core CI box two OpenMP threads make these tiny steps ~100× slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- the loss, by hand ---------------------------------------------------------------------------
def test_distillation_loss_known_values():
    # Two pixels, C = 2, T = 2.
    # pixel 1: teacher logits [0, 2 ln 3] → /T = [0, ln 3] → q = [1/4, 3/4]; student [0, 0] → p = [1/2, 1/2]
    #          KL(q‖p) = 1/4·ln(1/4 / 1/2) + 3/4·ln(3/4 / 1/2) = −0.25·ln 2 + 0.75·ln 1.5
    #                  = −0.25·0.6931472 + 0.75·0.4054651 = −0.1732868 + 0.3040988 = 0.1308120
    # pixel 2: teacher = student = [1, 1] → KL = 0
    # loss = T² · mean = 4 · 0.1308120 / 2 = 0.2616241
    teacher = torch.tensor([[0.0, 1.0], [2 * LN3, 1.0]]).view(1, 2, 1, 2)
    student = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2).requires_grad_()
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx(0.2616241, abs=1e-6)
    # gradient: d(T²·KL)/dz_s = T²·(p − q)/T = T·(p − q); pixel 1: 2·([1/2, 1/2] − [1/4, 3/4]) = [0.5, −0.5],
    # divided by the 2 pixels of the mean → [0.25, −0.25]; pixel 2: p = q → 0
    loss.backward()
    assert torch.allclose(student.grad.view(2, 2), torch.tensor([[0.25, 0.0], [-0.25, 0.0]]), atol=1e-6)


def test_distillation_loss_hard_teacher_and_temperature_one():
    # A label-only source: log(one-hot) = [−inf, 0] → q = [0, 1] at any T.
    # T = 1, student [0, 0] → p = [1/2, 1/2]: KL = 0·(…) + 1·ln(1 / (1/2)) = ln 2 = 0.6931472 (no nan from 0·−inf)
    teacher = torch.tensor([float("-inf"), 0.0]).view(1, 2, 1, 1)
    student = torch.zeros(1, 2, 1, 1)
    assert distillation_loss(student, teacher, temperature=1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    # same target, T = 2: student [0, 0] still gives p = [1/2, 1/2], so T²·ln 2 = 4·0.6931472 = 2.7725887
    assert distillation_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * math.log(2), abs=1e-6)
    with pytest.raises(ValueError):
        distillation_loss(student, teacher, temperature=0.0)


# ---- a trained tiny source, exported to ONNX ------------------------------------------------------
def _train_source(seed=0, iters=40):
    torch.manual_seed(seed)
    model = build_model("tiny", num_classes=19)
    meta = ModelMeta(arch="tiny", input_size=(48, 64))
    data = TinyDataset(n=6)
    images = torch.stack([d["image"] for d in data.items]).float()
    labels = torch.stack([d["label"] for d in data.items])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(iters):
        loss = F.cross_entropy(model(meta.normalize(images)), labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), meta


def _export(model, path: Path, meta=None, hw=(48, 64), dynamic=True, batch=1):
    import onnx

    x = torch.zeros(batch, 3, *hw)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes=axes if dynamic else None, dynamo=False, opset_version=18)
    if meta is not None:
        proto = onnx.load(str(path))
        attach_to_onnx(proto, meta)
        onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    model, meta = _train_source()
    path = _export(model, tmp_path_factory.mktemp("src") / "source.onnx", meta)
    return model, meta, path


def test_teacher_matches_the_torch_model(source, tmp_path):
    from sfda_deploy.adapt.blackbox import BlackBoxTeacher

    model, meta, path = source
    teacher = BlackBoxTeacher.open(path)
    assert teacher.meta.class_set == "cityscapes19" and teacher.input_hw is None and teacher.input_batch is None
    images = torch.stack([d["image"] for d in TinyDataset(n=3, size=(40, 56), seed=5).items]).float()
    with torch.no_grad():
        want = model(meta.normalize(images))
    assert torch.allclose(teacher(images), want, atol=1e-4)
    # a fixed-shape export (batch 1, 32×32): chunks of one image, crops resized in and logits resized back
    fixed = BlackBoxTeacher.open(_export(model, tmp_path / "fixed.onnx", meta, hw=(32, 32), dynamic=False))
    assert fixed.input_hw == (32, 32) and fixed.input_batch == 1
    got = fixed(images)
    with torch.no_grad():
        small = model(meta.normalize(F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)))
    assert got.shape == (3, 19, 40, 56)
    assert torch.allclose(got, F.interpolate(small, size=(40, 56), mode="bilinear", align_corners=False), atol=1e-4)


def _agreement(student, student_meta, path):
    from sfda_deploy.adapt.blackbox import BlackBoxTeacher, teacher_agreement

    return teacher_agreement(student, student_meta, BlackBoxTeacher.open(path), TinyDataset(n=6), "cpu")


def test_distill_cli_student_agrees_with_the_onnx_teacher(source, invoke, monkeypatch, tmp_path):
    _, meta, path = source
    patch_datasets(monkeypatch, labelled=False)
    r = invoke(["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", path, "--arch", "tiny",
                "--method", "distill", "--iters", 60, "--batch", 4, "--crop", 32, 32, "--lr", 1e-2,
                "--workers", 0, "--name", "bb"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "adapt" / "bb"
    assert (run / "stage_D.safetensors").is_file() and (run / "model.safetensors").is_file()
    student, smeta = load_model(run / "model.safetensors")
    assert smeta.arch == "tiny" and smeta.class_set == "cityscapes19" and smeta.mean == meta.mean
    assert [p["command"] for p in smeta.provenance] == ["distill", "adapt"]
    assert smeta.provenance[0]["temperature"] == 2.0 and smeta.provenance[-1]["stages"] == ["D"]
    torch.manual_seed(0)  # the run's seed: the student it started from
    before = _agreement(build_model("tiny", num_classes=19), smeta, path)
    after = _agreement(student, smeta, path)
    assert after > before + 0.2 and after > 0.8, (before, after)


# ---- bad input: one line, exit 2, no checkpoint ------------------------------------------------------
def _no_checkpoint(tmp_path):
    return not list((tmp_path / "runs").rglob("*.safetensors")) if (tmp_path / "runs").exists() else True


def _adapt(invoke, tmp_path, source, *extra):
    return invoke(["adapt", "--data-root", tmp_path, "--source", source, "--method", "distill", "--iters", 2,
                   "--crop", 32, 32, "--workers", 0, *extra])


def test_onnx_class_count_mismatch(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, labelled=False)
    torch.manual_seed(0)
    sixteen = build_model("tiny", num_classes=16).eval()
    # metadata claims cityscapes19 but the graph outputs 16 channels
    with_meta = _export(sixteen, tmp_path / "meta16.onnx", ModelMeta(arch="tiny", input_size=(48, 64)))
    assert_user_error(_adapt(invoke, tmp_path, with_meta, "--arch", "tiny"), "outputs 16 classes", "cityscapes19")
    # plain ONNX: its classes must be named, then they are checked the same way
    plain = _export(sixteen, tmp_path / "plain16.onnx")
    assert_user_error(_adapt(invoke, tmp_path, plain, "--arch", "tiny"), "--class-set", "--normalization")
    assert_user_error(_adapt(invoke, tmp_path, plain, "--arch", "tiny", "--class-set", "cityscapes19",
                             "--normalization", "imagenet"), "outputs 16 classes")
    assert _no_checkpoint(tmp_path)


def test_target_class_set_differs_from_the_onnx_source(source, invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, labelled=False, class_set="synthia16")
    assert_user_error(_adapt(invoke, tmp_path, source[2], "--arch", "tiny"), "synthia16", "cityscapes19")
    assert _no_checkpoint(tmp_path)


def test_corrupt_onnx_and_missing_arch(source, invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, labelled=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    assert_user_error(_adapt(invoke, tmp_path, bad, "--arch", "tiny"), "cannot load", str(bad))
    assert_user_error(_adapt(invoke, tmp_path, tmp_path / "missing.onnx", "--arch", "tiny"), "does not exist")
    assert_user_error(_adapt(invoke, tmp_path, source[2]), "--arch")
    assert_user_error(_adapt(invoke, tmp_path, source[2], "--arch", "tinny"), "unknown model 'tinny'")
    assert _no_checkpoint(tmp_path)


# ---- D before another method's stages --------------------------------------------------------------
def _entropy_step(batch, student, teacher, state, cfg):
    """A stand-in source-free stage (entropy minimisation) until ATP lands on main."""
    p = student(state.normalize(batch["target"]["image"])).softmax(1)
    return {"entropy": -(p * p.clamp_min(1e-8).log()).sum(1).mean()}


def _fake_method():
    from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage

    return Method("fake", LoopConfig, (Stage("E", _entropy_step),))


def test_distill_then_another_method(source, invoke, monkeypatch, tmp_path):
    import yaml

    import sfda_deploy.adapt.methods as registry

    monkeypatch.setitem(registry.METHODS, "fake", _fake_method())
    patch_datasets(monkeypatch, labelled=False)
    r = invoke(["adapt", "--data-root", tmp_path, "--source", source[2], "--arch", "tiny", "--method", "fake",
                "--iters", 2, "--batch", 2, "--crop", 32, 32, "--set", "distill.iters=3",
                "--set", "distill.temperature=4", "--workers", 0, "--name", "chain"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "adapt" / "chain"
    assert (run / "stage_D.safetensors").is_file() and (run / "stage_E.safetensors").is_file()
    _, meta = load_model(run / "model.safetensors")
    assert meta.provenance[0]["temperature"] == 4 and meta.provenance[-1]["stages"] == ["D", "E"]
    # label-free selection: the distilled student (end of D) is the reference a fallback ships, E's the candidates
    sel = json.loads((run / "metrics.json").read_text())["selection"]
    assert (sel["reference"]["stage"], sel["reference"]["iter"]) == ("D", 3)
    assert [p["stage"] for p in sel["points"]] == ["E"]
    recipes = yaml.safe_load((run / "config.yaml").read_text())["stage_recipes"]
    assert recipes["D"]["iters"] == 3 and recipes["D"]["crop"] == [32, 32] and recipes["D"]["lr"] == 1e-3
    # distillation options without a black-box source are a user error
    ckpt = run / "model.safetensors"
    assert_user_error(invoke(["adapt", "--data-root", tmp_path, "--source", ckpt, "--method", "fake",
                              "--set", "distill.iters=3"]), "black-box source")
    assert_user_error(invoke(["adapt", "--data-root", tmp_path, "--source", ckpt, "--method", "fake",
                              "--arch", "tiny"]), "drop them")


def test_blackbox_distill_then_atp_resumes_to_the_same_model(source, invoke, monkeypatch, tmp_path):
    """ONNX source → distilled tiny student (D) → ATP A, T, P; cut inside T, resumed from the run dir."""
    import dataclasses

    from sfda_deploy.adapt.methods import METHODS

    patch_datasets(monkeypatch, labelled=False)
    args = ["adapt", "--data-root", tmp_path, "--source", source[2], "--arch", "tiny", "--method", "atp",
            "--iters", 3, "--batch", 2, "--crop", 32, 32, "--set", "distill.iters=3",
            "--set", "distill.checkpoint_every=1", "--set", "checkpoint_every=1", "--set", "ignore_top=0",
            "--set", "ignore_bottom=0", "--set", "proj_dim=8", "--workers", 0]
    r = invoke([*args, "--name", "full"])
    assert r.exit_code == 0, r.output
    full = tmp_path / "runs" / "adapt" / "full"
    _, meta = load_model(full / "model.safetensors")
    assert meta.provenance[0]["command"] == "distill" and meta.provenance[-1]["stages"] == ["D", "A", "T", "P"]

    original = METHODS["atp"]
    teach = original.stages[1]

    def dying(batch, student, teacher, state, cfg):
        if state.iteration == 2:
            raise KeyboardInterrupt
        return teach.step(batch, student, teacher, state, cfg)

    monkeypatch.setitem(METHODS, "atp", dataclasses.replace(
        original, stages=(original.stages[0], dataclasses.replace(teach, step=dying), original.stages[2])))
    assert invoke([*args, "--name", "cut"]).exit_code != 0
    cut = tmp_path / "runs" / "adapt" / "cut"
    assert not (cut / "model.safetensors").exists()  # nothing that looks finished
    monkeypatch.setitem(METHODS, "atp", original)
    r = invoke([*args, "--resume", cut])
    assert r.exit_code == 0, r.output
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
