"""``sfda-deploy export``: checkpoint → ONNX (parity-gated) → optional fp16/INT8 ONNX and TensorRT engine.

Every input is checked before the run directory is created; every model file is written under a
temporary name and only renamed once its parity check passed, so a failed export never leaves a file
that looks complete. The run directory then holds ``report.json`` with what failed.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Optional

from sfda_deploy.checkpoint import load_model
from sfda_deploy.config import ExportConfig
from sfda_deploy.data import frames as F
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.export_settings import ExportSettings
from sfda_deploy.export.onnx import MASK_DTYPES, OUTPUT_NAMES, check_imgsz, convert_fp16, export_module, save_onnx
from sfda_deploy.export.parity import frames_used, gate, parity, verify_frames
from sfda_deploy.export.verify import open_runner, torch_runner
from sfda_deploy.messages import say
from sfda_deploy.runs import atomic_path, finish_run, new_run_dir, write_json
from sfda_deploy.version import __version__


def _check_flags(cfg: ExportConfig) -> None:
    """Flag combinations that cannot work, before anything is loaded or written."""
    if not cfg.onnx:  # only a config file can say so: there is no --no-onnx
        raise SfdaError("'onnx: false' cannot be honoured: the ONNX is always written (it is the portable "
                        "file, and --trt builds its engine from it): drop 'onnx' from the config file")
    if cfg.output not in OUTPUT_NAMES:
        raise SfdaError(f"--output {cfg.output} is unknown: use logits or mask")
    if cfg.mask_dtype not in MASK_DTYPES:
        raise SfdaError(f"--mask-dtype {cfg.mask_dtype} is unknown: use {' or '.join(MASK_DTYPES)}")
    if cfg.fp16 and cfg.int8:
        raise SfdaError("--fp16 and --int8 together: pick one (--int8 already runs the layers it leaves unquantized "
                        "in fp16)")
    if (cfg.int8 or cfg.int8_cpu) and not cfg.calib_data:
        flag = "--int8" if cfg.int8 else "--int8-cpu"
        raise SfdaError(f"{flag} needs calibration frames from the TARGET domain: pass --calib-data DIR_OR_VIDEO "
                        "(the adaptation images or a video of the deployment camera)")
    if cfg.batch < 1 or cfg.calib_count < 1:
        raise SfdaError("--batch and --calib-count must be at least 1: pass a positive number")
    if (cfg.max_batch is not None or cfg.max_imgsz is not None) and not cfg.trt:
        raise SfdaError("--max-batch/--max-imgsz bound a TensorRT engine's profile: add --trt --dynamic or drop them")
    if cfg.opset < 17:
        raise SfdaError(f"--opset {cfg.opset} is too old for the exporter: use --opset 18")


def with_checkpoint(cfg: ExportConfig) -> ExportConfig:
    """``cfg`` with the file it exports: a run directory stands for its model (``run_folders.model_in_run``); none
    given, the latest finished adapt run's model, said in one line."""
    from sfda_deploy.run_folders import check_not_resume_state, describe_run_time, latest_run, model_in_run
    from sfda_deploy.runs import runs_root

    if cfg.checkpoint:
        path = model_in_run(cfg.checkpoint)
        check_not_resume_state(path)
        return dataclasses.replace(cfg, checkpoint=str(path))
    run = latest_run("adapt")
    if run is None:
        raise SfdaError("export needs a checkpoint and there is no finished adapt run under "
                        f"{runs_root() / 'adapt'} to take: sfda-deploy export runs/adapt/NAME (or its model.safetensors)")
    path = run / "model.safetensors"
    say(f"no checkpoint given: the latest adapt run's model, {path} from {describe_run_time(run)}")
    return dataclasses.replace(cfg, checkpoint=str(path))


def engine_skipped(cfg: ExportConfig) -> Optional[str]:
    """Why ``--trt`` cannot build an engine on this machine (no CUDA GPU, no TensorRT), or None.

    Checked before TensorRT is imported (its objects can crash without a GPU); the ONNX is exported
    anyway and ``build_elsewhere`` says how to build the engine where there is a GPU.
    """
    if not cfg.trt:
        return None
    from sfda_deploy.runtime.engine import tensorrt_missing

    return tensorrt_missing()


def engine_flags(settings: dict) -> str:
    """The engine build settings of an export (``--trt`` and a dynamic profile's bounds) as flags: what the
    engine built elsewhere from its ONNX needs to be the engine asked for here."""
    flags = ["--trt"]
    if settings.get("dynamic"):
        flags.append("--dynamic")
        if settings.get("batch", 1) != 1:
            flags.append(f"--batch {settings['batch']}")
        if settings.get("max_batch") is not None:
            flags.append(f"--max-batch {settings['max_batch']}")
        if settings.get("max_imgsz") is not None:
            flags.append("--max-imgsz " + " ".join(str(v) for v in settings["max_imgsz"]))
    if settings.get("workspace") not in (None, 4.0):
        flags.append(f"--workspace {settings['workspace']:g}")
    return " ".join(flags)


def build_elsewhere(onnx_path: Path | str, why: str, settings: Optional[dict] = None) -> str:
    """The one line that says an engine was not built here and how to build it on a GPU machine, with the
    export's engine settings (``engine_flags``)."""
    return (f"no TensorRT engine built ({why} here): on an NVIDIA GPU with TensorRT run "
            f"'sfda-deploy export {onnx_path} {engine_flags(settings or {})}' (or plain TensorRT's "
            f"'trtexec --onnx={Path(onnx_path).name} --saveEngine=model.engine')")


def run_export(cfg: ExportConfig, run_dir: Optional[Path] = None) -> dict:
    """Export ``cfg.checkpoint``; returns the report dict (also written to ``report.json``).

    Without a CUDA GPU and TensorRT, ``--trt`` still writes the ONNX (with its parity report) and then
    says in one line how to build the engine on a GPU machine. An ``.onnx`` given with ``--trt`` builds
    its engine (``export_onnx_engine``).

    Args:
        run_dir: an existing, empty directory to write into (the demo's ``export`` stage); default: a
            new ``runs/export/NAME``.
    """
    _check_flags(cfg)
    cfg = with_checkpoint(cfg)
    from sfda_deploy.export.targets import check_targets

    targets = check_targets(ExportSettings.pick(cfg))  # the deployment targets' options, checked before anything is loaded
    suffix = Path(cfg.checkpoint).suffix.lower()
    if suffix == ".onnx":
        return export_onnx_engine(cfg)
    if suffix in (".engine", ".plan"):
        raise SfdaError(f"{cfg.checkpoint} is an engine, not a checkpoint: export starts from the .safetensors file "
                        "that adapt/train-source wrote (runs/adapt/NAME/model.safetensors), or from an .onnx with --trt")
    skipped = engine_skipped(cfg)
    model, meta = load_model(cfg.checkpoint, cfg.device)
    imgsz = tuple(cfg.imgsz) if cfg.imgsz else tuple(meta.input_size)
    check_imgsz(imgsz, model.output_stride)
    if cfg.trt:  # the engine profile's bounds, checked before minutes of export
        from sfda_deploy.export.tensorrt import profile_shapes

        profile_shapes(imgsz, cfg.batch, cfg.dynamic, model.output_stride, cfg.max_batch, cfg.max_imgsz)
    torch_ref = torch_runner(model, meta, Path(cfg.checkpoint), cfg.device, imgsz)
    if cfg.int8 or cfg.int8_cpu:
        from sfda_deploy.export.calibration import check_count

        calib = F.read_frames(cfg.calib_data, imgsz, cfg.calib_count, meta.classes, what="--calib-data")
        check_count(len(calib))
    checks, verify_source = verify_frames(cfg.verify_data, meta, imgsz)
    images, labels = F.stack(checks)

    run_dir = run_dir or new_run_dir("export", cfg.name or _default_name(cfg.checkpoint))
    report = {"checkpoint": str(cfg.checkpoint), "settings": dataclasses.asdict(cfg), "files": {},
              "parity": {}, "verify_data": verify_source or f"{len(checks)} generated frames",
              "verify_images": len(checks), "passed": False,
              "verify_on": frames_used(len(checks), verify_source, labels is not None)}
    try:
        _export_all(dataclasses.replace(cfg, trt=cfg.trt and not skipped), model, meta, imgsz, run_dir, torch_ref,
                    images, labels, report, calib if cfg.int8 or cfg.int8_cpu else None, targets)
        if skipped:
            report["engine_skipped"] = skipped
    finally:
        write_json(run_dir / "report.json", report)
    finish_run(run_dir)  # last: the INCOMPLETE mark new_run_dir wrote first goes
    _print_done(report, run_dir)
    return report


def file_to_run(files: dict, gpu: bool) -> tuple[str, str]:
    """The fastest file an export wrote for where it will run, and why (measured: docs/benchmark.md).

    A TensorRT engine where there is one. On a GPU without one, the fp16 ONNX (ONNX Runtime's CUDA provider
    runs it in half precision), else the fp32 one. On a CPU, ONNX Runtime's INT8 CPU file (3.3-4x fp32 for
    mobilenetv2_aspp), else the fp32 ONNX: the fp16 file is slower than fp32 there (ONNX Runtime's CPU provider
    has almost no fp16 kernels: docs/benchmark.md) and the Q/DQ INT8 file is for TensorRT.
    """
    if files.get("engine"):
        return files["engine"], "the TensorRT engine"
    if gpu:
        return (files["fp16_onnx"], "fp16 on the GPU") if files.get("fp16_onnx") else (files["onnx"], "fp32")
    if files.get("int8_cpu_onnx"):
        return files["int8_cpu_onnx"], "the fastest on a CPU"
    slower = [Path(files[k]).name for k in ("fp16_onnx", "int8_onnx") if files.get(k)]
    return files["onnx"], ("on a CPU fp32 runs faster than " + " and ".join(slower) + " (they are for GPUs)"
                           if slower else "fp32")


def _print_done(report: dict, run_dir: Path) -> None:
    files = report["files"]
    gpu = str(report["settings"].get("device", "cpu")) != "cpu"
    final, why = file_to_run(files, gpu)
    say(f"export done in {report['export_seconds']:.1f}s → {run_dir}")
    if report.get("engine_skipped"):
        onnx_for_engine = files.get("int8_onnx") or files.get("fp16_onnx") or files["onnx"]
        say(build_elsewhere(onnx_for_engine, report["engine_skipped"], report["settings"]))
    say(f"run it:  sfda-deploy segment SOURCE --model {final}  ({why})")


def export_onnx_engine(cfg: ExportConfig) -> dict:
    """``export model.onnx --trt``: a TensorRT engine from an already exported ONNX (on a GPU machine).

    The ONNX carries its precision and size; the engine's parity gate compares it with that ONNX run by
    ONNX Runtime on the CPU. Writes ``model.engine`` (+ sidecar) and ``report.json`` into a new run.
    """
    from sfda_deploy.runtime.ort_choice import file_meta

    if not cfg.trt:
        raise SfdaError(f"{cfg.checkpoint} is an ONNX, not a checkpoint: add --trt to build its TensorRT engine "
                        "from it, or export the .safetensors checkpoint")
    if cfg.fp16 or cfg.int8 or cfg.int8_cpu or cfg.imgsz:
        raise SfdaError("--fp16/--int8/--int8-cpu/--imgsz are fixed inside an exported ONNX: export the "
                        "checkpoint with them (sfda-deploy export CKPT --fp16 --trt)")
    found = file_meta(Path(cfg.checkpoint))  # None when unreadable: opening it below says why
    if cfg.dynamic and found is not None and not found.extra.get("dynamic"):
        raise SfdaError(f"--dynamic needs a dynamic ONNX, and {cfg.checkpoint} was exported static: export the "
                        "checkpoint with --dynamic (sfda-deploy export CKPT --trt --dynamic), or drop --dynamic")
    skipped = engine_skipped(cfg)
    if skipped:
        raise SfdaError(f"building a TensorRT engine needs an NVIDIA GPU with TensorRT ({skipped} here): run this "
                        "command on the deployment machine (pip install 'sfda-deploy[trt]')")
    reference = open_runner(cfg.checkpoint, "cpu")
    meta = reference.meta
    imgsz = reference.imgsz or tuple(meta.input_size)
    checks, verify_source = verify_frames(cfg.verify_data, meta, imgsz)
    images, labels = F.stack(checks)
    run_dir = new_run_dir("export", cfg.name or _default_name(cfg.checkpoint))
    report = {"checkpoint": str(cfg.checkpoint), "settings": dataclasses.asdict(cfg), "parity": {},
              "files": {"onnx": str(cfg.checkpoint)}, "verify_data": verify_source or f"{len(checks)} generated frames",
              "verify_images": len(checks), "passed": False,
              "verify_on": frames_used(len(checks), verify_source, labels is not None)}
    start = time.perf_counter()
    try:
        fp32 = meta.extra.get("precision", "fp32") == "fp32"
        _export_engine(cfg, imgsz, run_dir, reference, images, labels, report, fp32, "ONNX Runtime")
        report["export_seconds"], report["passed"] = time.perf_counter() - start, True
    finally:
        reference.close()
        write_json(run_dir / "report.json", report)
    _print_done(report, run_dir)
    return report


def _default_name(checkpoint: str) -> str:
    path = Path(checkpoint)
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


def export_meta(meta, cfg: ExportConfig, imgsz, precision: str, stride: int):
    """The ONNX/engine metadata of an export: the checkpoint's, plus how and at what size it was exported."""
    extra = {**meta.extra, "output": cfg.output, "output_stride": stride, "input_name": "images",
             "output_name": OUTPUT_NAMES[cfg.output],
             "dynamic": cfg.dynamic, "imgsz": list(imgsz), "batch": None if cfg.dynamic else cfg.batch,
             "precision": precision, "opset": cfg.opset, "sfda_deploy_version": __version__,
             "export_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if cfg.output == "mask":
        extra["mask_dtype"] = cfg.mask_dtype
    return meta.replace(extra=extra, input_size=tuple(imgsz)).with_provenance(
        command="export", precision=precision, sfda_deploy_version=__version__)


def _export_all(cfg, model, meta, imgsz, run_dir, torch_ref, images, labels, report, calib, targets) -> None:
    start = time.perf_counter()
    example_batch = max(2, cfg.batch) if cfg.dynamic else cfg.batch  # torch.export specializes size-1 dims
    proto = export_module(model, imgsz, example_batch, cfg.dynamic, cfg.opset, cfg.output, cfg.mask_dtype)
    onnx_path = run_dir / "model.onnx"
    args = (torch_ref, images, labels, report)
    _gated_variant(onnx_path, lambda tmp: save_onnx(proto, export_meta(meta, cfg, imgsz, "fp32", model.output_stride),
                                                    tmp), "fp32", "ONNX fp32", *args)
    report["files"]["onnx"] = str(onnx_path)
    if cfg.fp16:
        fp16_path = run_dir / "model_fp16.onnx"
        _gated_variant(fp16_path, lambda tmp: convert_fp16(onnx_path, tmp, export_meta(meta, cfg, imgsz, "fp16",
                                                                                       model.output_stride)),
                       "fp16", "ONNX fp16", *args)
        report["files"]["fp16_onnx"] = str(fp16_path)
    if cfg.int8:
        from sfda_deploy.export.calibration import quantize_qdq

        int8_path = run_dir / "model_int8.onnx"
        report["int8_method"] = _gated_variant(
            int8_path, lambda tmp: quantize_qdq(onnx_path, tmp, calib, export_meta(meta, cfg, imgsz, "int8",
                                                                                  model.output_stride)),
            "int8", "ONNX int8 (Q/DQ)", *args)
        report["files"]["int8_onnx"] = str(int8_path)
    if cfg.int8_cpu:
        _export_int8_cpu(onnx_path, run_dir, calib, export_meta(meta, cfg, imgsz, "int8", model.output_stride), *args)
    if cfg.trt:
        _export_engine(cfg, imgsz, run_dir, torch_ref, images, labels, report, not (cfg.fp16 or cfg.int8))
    if targets:  # deepstream/, triton/: after the model files they are made from passed their gates
        from sfda_deploy.export.targets import write_targets

        write_targets(dict(settings=ExportSettings.pick(cfg), model=model, meta=meta, imgsz=imgsz, run_dir=run_dir,
                           images=images), targets, report)
    report["export_seconds"] = time.perf_counter() - start
    report["passed"] = True


def _export_int8_cpu(onnx_path: Path, run_dir: Path, calib, meta, torch_ref, images, labels, report) -> None:
    """``model_int8_cpu.onnx`` (``cpu_int8.quantize_cpu``), kept only if its ΔmIoU is within
    ``cpu_int8.INT8_MIOU_GATE`` on labelled frames (without labels the agreement is reported, not gated)."""
    from sfda_deploy.export.cpu_int8 import quantize_cpu

    path = run_dir / "model_int8_cpu.onnx"
    _gated_variant(path, lambda tmp: quantize_cpu(onnx_path, tmp, calib, meta), "int8_cpu",
                   "ONNX int8 (ONNX Runtime CPU)", torch_ref, images, labels, report)
    report["files"]["int8_cpu_onnx"] = str(path)


def _gated_variant(path: Path, make, precision: str, title: str, torch_ref, images, labels, report):
    """Write one ONNX file with ``make(tmp)``, compare it with torch and apply the gate before it takes its
    real name (a file that fails is never left behind); the parity lands in ``report["parity"]["onnx_<precision>"]``.
    Returns what ``make`` returned."""
    with atomic_path(path) as tmp:
        made = make(tmp)
        report["parity"][f"onnx_{precision}"] = result = parity(torch_ref, tmp, images, labels, f"parity {precision}")
        gate(f"{title} vs torch", result, fp32=precision == "fp32", on=report.get("verify_on", ""))
        if precision == "int8_cpu":
            from sfda_deploy.export.cpu_int8 import check_miou

            check_miou(title, result)
    return made


def _export_engine(cfg, imgsz, run_dir, torch_ref, images, labels, report, fp32: bool,
                   reference: str = "torch") -> None:
    """Engine from the most precise-as-asked ONNX; kept under its real name only if it passes the gate
    (the strict fp32 one when ``fp32``) against ``torch_ref`` (named ``reference`` in the printed line)."""
    from sfda_deploy.export.tensorrt import build_engine, engine_device
    from sfda_deploy.runtime.engine_file import sidecar_path, write_engine

    source = Path(report["files"].get("int8_onnx") or report["files"].get("fp16_onnx") or report["files"]["onnx"])
    plan, sidecar = build_engine(source, ExportSettings.pick(cfg), imgsz)  # timing cache: one per GPU model + TensorRT version
    engine_path = run_dir / "model.engine"
    with atomic_path(engine_path) as tmp:
        write_engine(tmp, plan, sidecar)
        try:
            report["parity"]["engine"] = result = parity(torch_ref, tmp, images, labels, "parity engine",
                                                          engine_device(cfg.device))
        finally:
            sidecar_path(tmp).unlink(missing_ok=True)
        gate(f"TensorRT engine vs {reference}", result, fp32=fp32, on=report.get("verify_on", ""))
        write_json(sidecar_path(engine_path), sidecar)
    report["files"]["engine"] = str(engine_path)
