"""``sfda-deploy evaluate``: the mIoU of any model file on a whole labelled split (``runtime.evaluation``: the
backends ``segment`` runs it with), or of saved prediction PNGs (``evaluate.evaluate_predictions``); writes
``metrics.json``, ``table.txt``, ``iou.png``, ``confusion.png`` and ``config.yaml`` to ``runs/evaluate/<name>``."""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.classes import ClassSet, get_class_set
from sfda_deploy.config import EvaluateConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.data import TARGETS, build_dataset, is_labelled
from sfda_deploy.device import device_name
from sfda_deploy.errors import SfdaError
from sfda_deploy.evaluate import check_class_set, evaluate_predictions, prediction_lut
from sfda_deploy.messages import plural, say
from sfda_deploy.report import write_eval_report
from sfda_deploy.runs import new_run_dir, remove_if_unused
from sfda_deploy.runtime.backends import describe, load_backend, resolve_model_path
from sfda_deploy.runtime.evaluation import evaluate_backend
from sfda_deploy.runtime.io import size_mismatch_note


def run_evaluate(cfg: EvaluateConfig) -> Path:
    """``sfda-deploy evaluate``: writes ``metrics.json``, ``table.txt``, ``iou.png`` and ``confusion.png`` to
    ``runs/evaluate/<name>`` and prints the per-class table. Returns the run directory."""
    check_mode(cfg)
    if not cfg.checkpoint:
        classes = get_class_set(cfg.class_set or "cityscapes19")
        prediction_lut(classes, cfg.pred_format)
        dataset = evaluation_set(cfg, classes)
        run_dir = new_run_dir("evaluate", cfg.name)
        try:
            result = evaluate_predictions(dataset, cfg.predictions, classes, cfg.pred_format).result(classes.names)
        except BaseException:
            remove_if_unused(run_dir)
            raise
        write_evaluation(run_dir, cfg, result, classes, len(dataset), f"predictions {cfg.predictions}",
                         {"predictions": cfg.predictions, "pred_format": cfg.pred_format})
        return run_dir
    path = str(resolve_model_path(cfg.checkpoint, engine=device_name(cfg.device) != "cpu"))
    backend = load_backend(path, "auto", cfg.device, tuple(cfg.imgsz) if cfg.imgsz else None, cfg.batch,
                           reference=True)
    try:
        classes = check_class_set(backend.meta, cfg.class_set, path)
        dataset = evaluation_set(cfg, classes)
        note = size_mismatch_note(tuple(dataset[0]["image"].shape[-2:]), backend.input_size,
                                  tuple(backend.meta.input_size))
        if note:
            say(f"note: {note}")
        run_dir = new_run_dir("evaluate", cfg.name)  # before the long part: an unwritable place fails fast
        try:
            result = evaluate_backend(backend, dataset, cfg.workers, desc="eval")
        except BaseException:
            remove_if_unused(run_dir)  # nothing was written: leave no empty run behind
            raise
        model = describe(backend)
    finally:
        backend.close()
    size = "x".join(str(v) for v in backend.input_size)
    write_evaluation(run_dir, cfg, result, classes, len(dataset), f"{Path(path).name} ({model['backend']}, {size})",
                     {"checkpoint": path, "model": model})
    return run_dir


def check_mode(cfg: EvaluateConfig) -> None:
    """Exactly one of --checkpoint / --predictions, --imgsz only with a model, a labelled --target."""
    if bool(cfg.checkpoint) == bool(cfg.predictions):
        raise SfdaError("pass exactly one of --checkpoint MODEL (run a model: .safetensors, .onnx, .engine or a run "
                        "directory) or --predictions DIR (score saved label maps)")
    if cfg.imgsz and (cfg.predictions or min(cfg.imgsz) < 1):
        raise SfdaError(f"--imgsz {' '.join(map(str, cfg.imgsz))} needs --checkpoint and a positive H W, "
                        "e.g. --imgsz 512 1024")
    if cfg.target in TARGETS and not is_labelled(cfg.target):
        labelled = ", ".join(t for t in TARGETS if is_labelled(t))
        raise SfdaError(f"--target {cfg.target} has no labels to evaluate against: use a labelled one ({labelled})")


def evaluation_set(cfg: EvaluateConfig, classes: ClassSet):
    """The labelled split ``cfg`` names, cut to ``--max-images`` (the first N in the dataset's fixed order)."""
    dataset = build_dataset(cfg.target, cfg.data_root, cfg.split, class_set=classes.name)
    if cfg.max_images is None or cfg.max_images >= len(dataset):
        return dataset
    if cfg.max_images < 1:
        raise SfdaError(f"--max-images {cfg.max_images} must be at least 1")
    dataset.pairs = dataset.pairs[:cfg.max_images]
    return dataset


def write_evaluation(run_dir: Path, cfg: EvaluateConfig, result: dict, classes: ClassSet, images: int, what: str,
                     extra: dict) -> None:
    """``metrics.json``, ``table.txt``, ``iou.png``, ``confusion.png`` and ``config.yaml`` of an evaluation;
    prints the table and the mIoU line. ``what``: the model (or predictions) as the titles name it."""
    extra = {**extra, "target": cfg.target, "data_root": str(cfg.data_root), "split": cfg.split,
             "class_set": classes.name, "images": images}
    save_config(run_dir, cfg)
    title = f"{what} on {cfg.target} {cfg.split} ({plural(images, 'image')}, {cfg.data_root})"
    table = write_eval_report(run_dir, result, classes.names, cfg.split, extra, title=title)
    say(table)
    say(f"mIoU {result['miou']:.2f} over {plural(images, 'image')} ({cfg.target} {cfg.split}) → {run_dir}")
