"""``sfda-deploy demo``: the whole flow on the built-in synthetic domain shift, one function per stage.

Stages: generate the benchmark → load the bundled source model → evaluate it on the source val and
every target style's val (the "source-only" row) → adapt it to one style with ATP and evaluate it there
→ report the before/after table → export the adapted model to ONNX (parity report) → segment a video
of the style's val frames with it (overlay video, fps).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sfda_deploy.assets import BUNDLED_MODEL  # the demo's source model, also segment's default
from sfda_deploy.config import DemoConfig, SegmentConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.device import parse_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.runs import new_run_dir, write_json, write_text


def stage_data(cfg: DemoConfig, run_dir: Path, size: tuple[int, int]) -> Path:
    """Generate (or reuse, when ``--data-dir`` already holds the same) the synthetic benchmark."""
    from sfda_deploy.data.synthetic import STYLES, generate

    if cfg.images < 1:
        raise SfdaError(f"--images is {cfg.images}: pass at least 1 image per split and style")
    root = Path(cfg.data_dir) if cfg.data_dir else run_dir / "data"
    start = time.perf_counter()
    try:
        generate(root, STYLES, {"train": cfg.images, "val": cfg.images}, size, cfg.seed)
    except OSError as e:
        raise SfdaError(f"cannot write the demo data under {root} ({e.strerror}): choose a writable --data-dir") from None
    say(f"[data] synthetic benchmark ({', '.join(STYLES)}; {cfg.images} train + {cfg.images} val each, "
               f"{size[0]}x{size[1]}) in {time.perf_counter() - start:.1f}s: {root}")
    return root


def stage_load_source(cfg: DemoConfig):
    """The bundled source model → (model in eval mode, ModelMeta)."""
    from sfda_deploy.checkpoint import load_model

    path = Path(cfg.model) if cfg.model else BUNDLED_MODEL
    if not path.is_file():
        raise SfdaError(f"source model {path} is missing: reinstall the package (it ships the bundled model) "
                        "or pass --model CKPT")
    model, meta = load_model(path, cfg.device)
    say(f"[model] {meta.arch} ({meta.class_set}) from {path}")
    return model, meta


def stage_evaluate(model, meta, root: Path, styles, device: str, label: str) -> dict[str, dict]:
    """Evaluate ``model`` on the val split of each style → ``{style: result dict}``."""
    from sfda_deploy.data import build_dataset
    from sfda_deploy.evaluate import evaluate_model

    results = {}
    for style in styles:
        loader = DataLoader(build_dataset("cityscapes", root / style, "val", class_set=meta.class_set),
                            batch_size=1, shuffle=False, num_workers=0)
        results[style] = evaluate_model(model, meta, loader, device, desc=f"{label} on {style}")
    return results


def stage_export(ckpt_path: Path, run_dir: Path, data_root: Path, device: str) -> Path:
    """Export the adapted checkpoint to ONNX (static, logits) with its parity report; returns the ``.onnx``.

    Args:
        ckpt_path: the adapted ``model.safetensors``.
        run_dir: the demo's run directory; the export goes to ``run_dir/export``.
        data_root: the target style's dataset (``root/<style>``, Cityscapes layout): its val images
            (with labels) are what the parity gate compares torch and ONNX Runtime on.
        device: where the torch reference runs.

    The size is the checkpoint's input size, unless the target frames have another aspect ratio
    (a model trained on square crops): then the frames' own size, since that is what gets deployed.
    """
    from sfda_deploy.checkpoint import read_safetensors
    from sfda_deploy.commands.export import run_export
    from sfda_deploy.config import ExportConfig
    from sfda_deploy.data.base import read_image
    from sfda_deploy.data.cityscapes import split_dir
    from sfda_deploy.data.frames import MAX_ASPECT_CHANGE
    from sfda_deploy.export.verify import AGREEMENT_GATE

    val = split_dir(data_root, "val")
    first = min(val.rglob("*.png"), default=None) if val.is_dir() else None
    if first is None:
        raise SfdaError(f"no target val images in {val}: pass the target style's folder (root/<style>)")
    h, w = read_safetensors(Path(ckpt_path))[1].input_size
    fh, fw = read_image(first).shape[:2]
    imgsz = (h, w) if abs((fw / fh) / (w / h) - 1) <= MAX_ASPECT_CHANGE else (fh, fw)
    out = run_dir / "export"
    out.mkdir()
    cfg = ExportConfig(checkpoint=str(ckpt_path), imgsz=imgsz, verify_data=str(val), device=device)
    report = run_export(cfg, out)
    parity = report["parity"]["onnx_fp32"]  # run_export has printed its fidelity line (agreement, Δlogit, mIoU)
    say(f"[export] ONNX fp32 {imgsz[0]}x{imgsz[1]} → {report['files']['onnx']} "
               f"({report['export_seconds']:.1f}s); parity gate ≥ {AGREEMENT_GATE}% met "
               f"({parity['argmax_agreement']:.4f}%) on {report['verify_on']}")
    return Path(report["files"]["onnx"])


def _crop(size: tuple[int, int]) -> tuple[int, int]:
    """The demo's training crop: 128×128 (the bundled model's), smaller on smaller frames."""
    return min(128, size[0]), min(128, size[1])


def stage_adapt(cfg: DemoConfig, source: Path, root: Path, run_dir: Path) -> Path:
    """Adapt ``source`` to ``cfg.style`` with ATP (A → T → P, ``cfg.budget`` split over the stages)
    on the style's unlabelled train split; returns the adapted checkpoint (in ``run_dir/adapt``)."""
    from sfda_deploy.adapt.methods.atp import NO_EGO_BAND
    from sfda_deploy.commands.adapt import run_adapt
    from sfda_deploy.config import AdaptConfig

    per_stage = max(cfg.budget // 3, 1)
    options = {**NO_EGO_BAND, "checkpoint_every": per_stage,
               "preview_every": per_stage}
    out = run_dir / "adapt"
    out.mkdir()
    start = time.perf_counter()
    say(f"[adapt] ATP A→T→P, {plural(per_stage, 'iteration')} per stage, on the unlabelled {cfg.style} "
               "train split")
    run_adapt(AdaptConfig(target="cityscapes", data_root=str(root / cfg.style), source=str(source), method="atp",
                          stages="A,T,P", iters=per_stage, batch=2, crop=_crop(cfg.size), device=cfg.device,
                          workers=0, seed=cfg.seed, name="demo", options=options), run_dir=out)
    say(f"[adapt] done in {time.perf_counter() - start:.0f}s: {out}")
    return out / "model.safetensors"


def stage_report(run_dir: Path, results: dict[str, dict[str, dict]], meta, style: str,
                 shipped: str = "") -> None:
    """Print the per-class IoU table of each model; write ``metrics.json``, ``table.txt`` and, for each
    model, the confusion matrix on the target style (``confusion_<model>.png``). ``shipped``: what the adapt
    run shipped, in words (``adapt.shipped.shipped_words``), named beside the adapted model's rows."""
    from sfda_deploy.metrics import format_table
    from sfda_deploy.report import plot_confusion

    named = {name: name if name == "source-only" or not shipped else f"{name}: shipped {shipped}" for name in results}
    for model_name, per_style in results.items():
        if style in per_style:
            plot_confusion(run_dir / f"confusion_{_slug(model_name)}.png", per_style[style], meta.classes.names,
                           title=f"{named[model_name]}\non the {style} style's val split")
    texts = []
    for model_name, per_style in results.items():
        texts.append(f"{named[model_name]} (per-class IoU %, val of each style)\n"
                     f"{format_table(per_style, meta.classes.names)}")
    text = "\n\n".join(texts)
    say("\n" + text + "\n")
    write_text(run_dir / "table.txt", text + "\n")
    write_json(run_dir / "metrics.json", results)


def _slug(name: str) -> str:
    """``"ATP (real)"`` → ``"atp-real"``: a model's name as a file-name part."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


DEMO_VIDEO_FPS = 10.0


def write_style_video(data_root: Path, style: str, path: Path, fps: float = DEMO_VIDEO_FPS) -> Path:
    """The val images of ``data_root/<style>`` (in name order) as an mp4v video at ``path``."""
    from sfda_deploy.data.base import decode_image
    from sfda_deploy.data.cityscapes import split_images
    from sfda_deploy.runtime.render import VideoSink

    images = split_images(data_root / style, "val")
    if not images:
        raise SfdaError(f"no val images of style '{style}' under {data_root / style}: "
                        "generate the benchmark first (sfda-deploy generate-data)")
    sink = None
    try:
        for image_path in images:
            frame = decode_image(image_path)
            if frame is None:
                raise SfdaError(f"{image_path} is not a readable image: regenerate the demo data")
            sink = sink or VideoSink(path, fps, frame.shape[:2])  # written under a temp name
            sink.write(frame)
    except BaseException:
        if sink is not None:
            sink.abort()  # no half-written video
        raise
    sink.close()  # renamed onto ``path`` only now
    return path


def stage_segment(onnx_path: Path, run_dir: Path, data_root: Path, style: str, device: str) -> Path:
    """Segment a video made of the target style's val images with the exported ONNX model.

    Writes ``run_dir/<style>_val.mp4``, runs ``segment`` on it with ONNX Runtime and prints where the
    overlay video is and the end-to-end fps. Returns the segment run directory.
    """
    from sfda_deploy.commands.segment import run_segment

    video = write_style_video(Path(data_root), style, Path(run_dir) / f"{style}_val.mp4")
    seg_dir = run_segment(SegmentConfig(source=str(video), model=str(onnx_path), backend="onnxruntime",
                                        device=device, name=Path(run_dir).name), Path(run_dir) / "segment")
    summary = json.loads((seg_dir / "summary.json").read_text())
    say(f"[segment] {plural(summary['frames'], 'frame')} of {video.name} at {summary['fps_end_to_end']:.1f} fps "
               f"end to end (onnxruntime, {device}); overlay video: {seg_dir / summary['outputs']['video']}")
    return seg_dir


def run_demo(cfg: DemoConfig) -> Path:
    """Run every stage into a new ``runs/demo/<name>`` directory; returns it."""
    from sfda_deploy.data.synthetic import STYLES

    torch.manual_seed(cfg.seed)
    if cfg.style not in STYLES or cfg.style == "source":
        raise SfdaError(f"--style {cfg.style} is not a target style: use one of "
                        f"{', '.join(s for s in STYLES if s != 'source')}")
    parse_device(cfg.device)  # an unknown name or CUDA without a GPU fails before anything is written
    model, meta = stage_load_source(cfg)
    run_dir = new_run_dir("demo", cfg.name)
    save_config(run_dir, cfg)
    root = stage_data(cfg, run_dir, tuple(cfg.size))
    results = {"source-only": stage_evaluate(model, meta, root, STYLES, cfg.device, "source-only")}
    deployed = Path(cfg.model) if cfg.model else BUNDLED_MODEL
    if cfg.budget > 0:
        from sfda_deploy.checkpoint import load_model

        deployed = stage_adapt(cfg, deployed, root, run_dir)
        adapted, _ = load_model(deployed, cfg.device)
        results[f"ATP ({cfg.style})"] = stage_evaluate(adapted, meta, root, [cfg.style], cfg.device, "ATP")
    stage_report(run_dir, results, meta, cfg.style, _shipped_words(run_dir / "adapt") if cfg.budget > 0 else "")
    if cfg.budget > 0:
        say(f"mIoU on {cfg.style} val: {demo_progression(run_dir / 'adapt', results, cfg.style)}")
    onnx_path = stage_export(deployed, run_dir, root / cfg.style, cfg.device)
    seg_dir = stage_segment(onnx_path, run_dir, root, cfg.style, cfg.device)
    say("\n" + closing_note(run_dir, root, deployed, onnx_path, seg_dir, cfg.style, command_name()))
    return run_dir


def demo_progression(adapt_dir: Path, results: dict, style: str) -> str:
    """``source-only 34.1 → AdaBN 52.1 → ATP 52.9 (shipped T/100, +0.8 over AdaBN)``: the demo's own scores of
    the source and of what the adapt run shipped, with the AdaBN baseline that run scored
    (``adapt.shipped.progression``)."""
    from sfda_deploy.adapt.shipped import progression

    selection = json.loads((adapt_dir / "metrics.json").read_text()).get("selection")
    baseline = (selection or {}).get("baseline") or {}
    return progression("ATP", results["source-only"][style]["miou"], baseline.get("miou"),
                       results[f"ATP ({style})"][style]["miou"], selection)


def _shipped_words(adapt_dir: Path) -> str:
    from sfda_deploy.adapt.shipped import shipped_words

    return shipped_words(json.loads((adapt_dir / "metrics.json").read_text()).get("selection"))


def command_name() -> str:
    """How the user's shell reaches this install's command: ``sfda-deploy`` when that is on PATH (this
    environment's), else the console script's path (e.g. ``.venv/bin/sfda-deploy`` after ``make install``
    without activating the environment), else ``python -m sfda_deploy``."""
    import os
    import shutil
    import sys

    here = Path(os.path.abspath(sys.executable)).parent
    found = shutil.which("sfda-deploy")
    if found and Path(os.path.abspath(found)).parent == here:
        return "sfda-deploy"
    script = here / "sfda-deploy"
    if script.is_file():
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else str(script)
    return f"{sys.executable} -m sfda_deploy"


def closing_note(run_dir: Path, data: Path, model: Path, onnx_path: Path, seg_dir: Path, style: str,
                 command: str = "sfda-deploy") -> str:
    """The demo's last lines: what it wrote (tables, plots, model, ONNX, video) and the commands to try next,
    spelt with ``command`` (``command_name``) so that they run as printed."""
    adapt = run_dir / "adapt"
    adapt_plots = [adapt / n for n in ("losses.png", "iou_before_after.png", "selection.png")]
    rows = [("tables", f"{run_dir / 'table.txt'} (per-class IoU), {run_dir / 'metrics.json'}"),
            ("plots", ", ".join(str(p) for p in sorted(run_dir.glob("confusion_*.png")))
             + "".join(f", {p}" for p in adapt_plots if p.is_file())
             + (f", {adapt / 'previews'}/" if (adapt / "previews").is_dir() else "")),
            ("model", str(model)),
            ("ONNX", f"{onnx_path} (parity: {onnx_path.parent / 'report.json'})"),
            ("video", f"{seg_dir / 'overlay.mp4'} (classes: {seg_dir / 'legend.png'})"),
            ("data", str(data))]
    lines = [f"the demo wrote everything under {run_dir}:"] + [f"  {k:<7}{v}" for k, v in rows]
    video = run_dir / f"{style}_val.mp4"
    lines += ["next (your own video in place of the demo's):",
              f"  {command} segment {video} --model {onnx_path}",
              f"  {command} evaluate --checkpoint {onnx_path} --target cityscapes --data-root {data / style}",
              f"  {command} adapt --target cityscapes --data-root {data / 'night'} --source {BUNDLED_MODEL} "
              "--method adabn",
              f"  {command} benchmark --compare {model} {onnx_path}"]
    return "\n".join(lines)
