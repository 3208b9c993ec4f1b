"""The model zoo: registry, shapes, output stride, the published DeepLabV2 layout, the real-time net."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.models import MODELS, build_model


def test_registry_lists_every_model():
    sizes = [f"b{i}" for i in range(6)]
    assert set(MODELS) == {"deeplabv2_r101", "deeplabv2_r50", "mobilenetv2_aspp", "tiny",
                           *(f"segformer_{v}" for v in sizes), *(f"daformer_mit{v}" for v in sizes)}
    with pytest.raises(SfdaError, match="did you mean 'deeplabv2_r50'.*mobilenetv2_aspp"):
        build_model("deeplabv2_r5")


# r101 differs from r50 only in the block count (checked by the layout test): r50 keeps this fast.
@pytest.mark.parametrize("name", ["tiny", "mobilenetv2_aspp", "deeplabv2_r50"])
def test_forward_shapes_and_output_stride(name):
    model = build_model(name, num_classes=7).eval()
    x = torch.randn(1, 3, 65, 129)  # odd sizes: 65 = 8·8 + 1, 129 = 8·16 + 1
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
    assert logits.shape == (1, 7, 65, 129)
    assert feats.shape[1] == model.feature_channels
    # Output stride 8 with "same"-style padding (and ceil-mode pooling): ceil(65/8) = 9, ceil(129/8) = 17.
    assert feats.shape[-2:] == (9, 17)
    assert model.output_stride == 8
    small = model(torch.randn(1, 3, 33, 65))
    assert small.shape == (1, 7, 33, 65)


def _expected_deeplabv2_r101_layout(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key → shape of the published AdaptSegNet-style DeepLabV2-ResNet101 state dict (docs/models.md)."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3)), start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            keys.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1), **bn(f"{p}.bn1", planes),
                         f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes),
                         f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **bn(f"{p}.bn3", planes * 4)})
            if i == 0:
                keys.update({f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1),
                             **bn(f"{p}.downsample.1", planes * 4)})
            inplanes = planes * 4
    for j in range(4):
        keys[f"layer5.conv2d_list.{j}.weight"] = (num_classes, 2048, 3, 3)
        keys[f"layer5.conv2d_list.{j}.bias"] = (num_classes,)
    return keys


def test_deeplabv2_r101_published_layout():
    model = build_model("deeplabv2_r101", num_classes=19)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_deeplabv2_r101_layout(19)
    # The computations that make published weights mean the same thing.
    assert model.maxpool.ceil_mode and model.maxpool.kernel_size == 3 and model.maxpool.padding == 1
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    for layer, dil in ((model.layer3, 2), (model.layer4, 4)):
        assert all(b.conv2.dilation == (dil, dil) and b.conv2.padding == (dil, dil) for b in layer)
        assert all(b.conv1.stride == (1, 1) for b in layer)
    assert [(c.dilation[0], c.padding[0]) for c in model.layer5.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert model.align_corners is True  # this lineage upsamples with align_corners=True
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(43.9e6, rel=0.01)


def test_deeplabv2_classifier_sums_four_branches():
    model = build_model("deeplabv2_r50", num_classes=2)
    f = torch.randn(1, 2048, 5, 6)
    expected = sum(conv(f) for conv in model.layer5.conv2d_list)
    assert torch.allclose(model.head(f), expected, atol=1e-6)


def test_deeplabv2_freeze_bn_and_head_parameters():
    model = build_model("deeplabv2_r50", num_classes=3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    assert all(m.weight.requires_grad for m in model.modules() if isinstance(m, nn.Conv2d))
    head = {id(p) for p in model.head_parameters()}
    assert head == {id(p) for p in model.layer5.parameters()}
    unfrozen = build_model("deeplabv2_r50", num_classes=3, freeze_bn=False)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_deeplabv2_multi_level_heads():
    model = build_model("deeplabv2_r50", num_classes=4, multi_level=True).eval()
    sd = model.state_dict()
    assert sd["layer5.conv2d_list.0.weight"].shape == (4, 1024, 3, 3)  # layer5 on layer3
    assert sd["layer6.conv2d_list.0.weight"].shape == (4, 2048, 3, 3)  # layer6 on layer4
    assert model.prediction_head == "layer6" and model.feature_channels == 2048
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        aux, main = model.forward_levels(x)
        logits = model(x)
    assert aux.shape == main.shape == (1, 4, 5, 6)
    assert torch.allclose(logits, model.upsample(main, (33, 41)))
    assert {id(p) for p in model.head_parameters()} == {id(p) for m in (model.layer5, model.layer6)
                                                      for p in m.parameters()}
    on_layer3 = build_model("deeplabv2_r50", num_classes=4, multi_level=True, prediction_head="layer5").eval()
    on_layer3.load_state_dict(sd)
    with torch.no_grad():
        assert torch.allclose(on_layer3(x), model.upsample(aux, (33, 41)))
    assert on_layer3.feature_channels == 1024
    with pytest.raises(SfdaError, match="prediction_head 'layer6' is not valid"):
        build_model("deeplabv2_r50", num_classes=4, prediction_head="layer6")


def test_mobilenetv2_aspp_size_and_head():
    model = build_model("mobilenetv2_aspp", num_classes=19)
    n = sum(p.numel() for p in model.parameters())
    assert n <= 5_000_000, n
    head = {id(p) for p in model.head_parameters()}
    assert {id(p) for p in model.classifier.parameters()} <= head
    assert {id(p) for p in model.aspp_head.parameters()} <= head
    assert not head & {id(p) for p in model.encoder.parameters()}
    slim = build_model("mobilenetv2_aspp", num_classes=19, width=0.5)
    assert sum(p.numel() for p in slim.parameters()) < n
    assert slim.feature_channels == 160


def test_mobilenetv2_aspp_trains_at_batch_one():
    # The image-pooling branch has no BN: BN on a 1×1 map would fail in train mode at batch 1.
    model = build_model("mobilenetv2_aspp", num_classes=3).train()
    out = model(torch.randn(1, 3, 32, 48))
    out.mean().backward()
    assert model.classifier.weight.grad is not None


def test_mobilenetv2_aspp_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = build_model("mobilenetv2_aspp", num_classes=5, width=0.5).eval()
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=18, dynamo=False,
                      input_names=["images"], output_names=["logits"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    # BatchNormalization stays where BN follows the broadcast add (no conv to fold it into).
    assert ops <= {"Conv", "BatchNormalization", "Clip", "Add", "ReduceMean", "Concat", "Resize", "Shape",
                   "Gather", "Unsqueeze", "Slice", "Cast", "Constant", "ConstantOfShape", "Identity"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-4)


@pytest.mark.parametrize("nest, prefix", [("state_dict", "module."), ("model", "Scale."), (None, "")])
def test_import_pth_published_layouts(tmp_path, nest, prefix):
    # a published AdaptSegNet-lineage file: DataParallel's "module." or the Caffe conversion's "Scale."
    # prefix, nested under a key, without num_batches_tracked (older torch): every weight lands
    from sfda_deploy.pth_import import import_pth

    torch.manual_seed(0)
    src = build_model("deeplabv2_r50", num_classes=16).eval()
    state = {prefix + k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "published.pth"
    torch.save({nest: state, "iteration": 5} if nest else state, path)
    model, meta = import_pth(path, "deeplabv2_r50", normalization="caffe")
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[k], v), k
    assert (meta.num_classes, meta.class_set, meta.channel_order) == (16, "synthia16", "BGR")
    assert meta.align_corners is True and not model.training


def test_deeplabv2_twin_heads_on_layer4_as_ldbe_teacher(tmp_path):
    # LDBE's model/DeeplabV2.py teacher: layer5 AND layer6 on layer4 (2048 ch), the prediction is layer5
    from sfda_deploy.pth_import import import_pth

    torch.manual_seed(0)
    src = build_model("deeplabv2_r50", num_classes=19, multi_level=True, layer5_channels=2048).eval()
    sd = src.state_dict()
    assert sd["layer5.conv2d_list.0.weight"].shape == sd["layer6.conv2d_list.0.weight"].shape == (19, 2048, 3, 3)
    assert src.prediction_head == "layer5" and src.feature_channels == 2048
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        first, second = src.forward_levels(x)
        assert torch.allclose(src(x), src.upsample(first, (33, 41)))
        assert not torch.allclose(first, second)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ldbe_teacher.pth")
    model, meta = import_pth(tmp_path / "ldbe_teacher.pth", "deeplabv2_r50", normalization="caffe")
    assert meta.arch_kwargs == {"multi_level": True, "layer5_channels": 2048}
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    with pytest.raises(SfdaError, match="layer5_channels 512"):
        build_model("deeplabv2_r50", num_classes=4, multi_level=True, layer5_channels=512)
