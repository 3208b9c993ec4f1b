"""``sfda-deploy segment``: overlay video / images, optional masks and a JSON summary in a new run dir."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sfda_deploy.adapt.online import get_online_method, online_method_names
from sfda_deploy.adapt.online.adapter import OnlineAdapter, check_adapt_every
from sfda_deploy.commands.segment_faults import (
    discard_video,
    link_report,
    link_summary,
    log_link_to_run,
    reconnect_policy,
    record_full_disk,
)
from sfda_deploy.config import SegmentConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.data.sources import Source, open_source
from sfda_deploy.disk import DiskFullError
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.progress import progress
from sfda_deploy.progress import write as write_line
from sfda_deploy.runs import finish_run, new_run_dir, run_logger, write_json
from sfda_deploy.runtime.backends import backend_for, describe, latest_model, load_backend, resolve_model_path
from sfda_deploy.runtime.io import size_mismatch_note
from sfda_deploy.runtime.label_scores import DriveScorer, format_scores, open_labels
from sfda_deploy.runtime.letterbox import check_resize_mode
from sfda_deploy.runtime.pipeline import PipelineResult, Prediction, run_pipeline
from sfda_deploy.runtime.render import (
    MASK_FORMATS,
    VideoSink,
    class_shares,
    draw_legend,
    legend_classes,
    legend_image,
    mask_image,
    overlay,
    put_fps,
    write_png,
)


class SegmentSink:
    """Writes what ``segment`` produces for each frame (runs on the pipeline's writer thread)."""

    def __init__(self, run_dir: Path, source: Source, meta: ModelMeta, cfg: SegmentConfig,
                 scorer: Optional[DriveScorer] = None):
        self.cfg, self.classes, self.scorer = cfg, meta.classes, scorer
        self.palette = self.classes.palette_array()
        video = cfg.save_video and source.kind != "images"
        self.video_fps = (source.fps or 30.0) / cfg.vid_stride  # keeps the clip's duration
        self.video = VideoSink(run_dir / "overlay.mp4", self.video_fps, source.size) if video else None
        self.overlay_dir = run_dir / "overlays" if cfg.save_video and not video else None
        self.mask_dir = run_dir / "masks" if cfg.save_masks else None
        self.legend = None
        if video or self.overlay_dir is not None:  # what the colours mean, beside every overlay output
            self.legend = run_dir / "legend.png"
            write_png(self.legend, legend_image(self.classes.names, self.palette)[..., ::-1])
        self.per_frame: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._start = None

    def _unique(self, name: str, index: int) -> str:
        name = name if name not in self._names else f"{name}_{index:06d}"
        self._names.add(name)
        return name

    def postprocess(self, pred: Prediction) -> np.ndarray:
        mask = pred.mask
        shares = class_shares(mask, self.classes.num_classes)
        self.per_frame.append({"index": pred.info.index, "name": pred.info.name,
                               "timestamp": pred.info.timestamp,
                               "class_share": [round(float(s), 6) for s in shares]})
        if self.scorer is not None:
            self.scorer.update(pred.info, mask)
        return mask

    def encode(self, pred: Prediction, mask: np.ndarray) -> None:
        self._start = self._start or time.perf_counter()
        name = self._unique(pred.info.name, pred.info.index)
        if self.video is not None or self.overlay_dir is not None:
            image = overlay(pred.frame, mask, self.palette, self.cfg.alpha)
            if self.cfg.legend and self.cfg.alpha > 0:
                shares = class_shares(mask, self.classes.num_classes)  # the mask is at the frame's size
                draw_legend(image, legend_classes(shares), self.classes.names, self.palette)
            if self.cfg.show_fps:
                put_fps(image, len(self.per_frame) / max(time.perf_counter() - self._start, 1e-6))
            if self.video is not None:
                self.video.write(image)
            else:
                write_png(self.overlay_dir / f"{name}.png", image[..., ::-1])
        if self.mask_dir is not None:
            write_png(self.mask_dir / f"{name}.png", mask_image(mask, self.cfg.mask_format, self.classes))

    def close(self) -> dict[str, Any]:
        """Finish the files; what was written, for the summary."""
        out: dict[str, Any] = {}
        if self.video is not None:
            path = self.video.close()
            out.update(video=path.name if path else None, video_frames=self.video.frames,
                       video_fps=self.video_fps, video_size=list(self.video.size))
        if self.overlay_dir is not None:
            out["overlays"] = self.overlay_dir.name
        if self.mask_dir is not None:
            out.update(masks=self.mask_dir.name, mask_format=self.cfg.mask_format)
        if self.legend is not None:
            out["legend"] = self.legend.name
        return out


def _check(cfg: SegmentConfig) -> None:
    if not 0.0 <= cfg.alpha <= 1.0:
        raise SfdaError(f"--alpha must be within 0..1, got {cfg.alpha}")
    check_resize_mode(cfg.resize)
    if cfg.mask_format not in MASK_FORMATS:
        raise SfdaError(f"unknown --mask-format '{cfg.mask_format}': choose {', '.join(MASK_FORMATS)}")
    check_adapt_every(cfg.adapt_every)
    if cfg.adapt_options and not cfg.adapt:
        raise SfdaError(f"--adapt-set sets a hyper-parameter of --adapt: add --adapt {online_method_names()}, "
                        "or drop it")
    if cfg.save_adapted and not cfg.adapt:
        raise SfdaError(f"--save-adapted saves what --adapt changed: add --adapt {online_method_names()}, or drop it")
    if cfg.adapt:
        get_online_method(cfg.adapt).make_config(cfg.adapt_options)
        kind = backend_for(resolve_model_path(cfg.model), cfg.backend)
        if kind != "torch":
            raise SfdaError(f"--adapt changes the weights, which the {kind} backend cannot: pass the .safetensors "
                            "checkpoint the model was exported from (torch backend)")


def build_summary(cfg: SegmentConfig, source: Source, backend, result: PipelineResult,
                  outputs: dict[str, Any], per_frame: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything ``summary.json`` holds (see the command's help)."""
    names = list(backend.meta.classes.names)
    per_frame = sorted(per_frame, key=lambda f: f["index"])
    mean = np.mean([f["class_share"] for f in per_frame], axis=0) if per_frame else np.zeros(len(names))
    return {
        "source": cfg.source, "source_kind": source.kind, "input_fps": source.fps,
        "input_size": list(source.size) if source.size else None,
        "frames": result.frames, "frames_expected": source.total,
        "unreadable_frames": source.unreadable, "dropped_frames": result.times.dropped,
        "ended_early_at_frame": source.ended_early_at, "reconnect": link_summary(source, cfg),
        "vid_stride": cfg.vid_stride, "resize": cfg.resize, "partial": result.partial,
        "fps_end_to_end": round(result.fps, 3), "wall_s": round(result.wall_s, 3),
        "ms_per_frame": result.times.ms_per_frame(),
        **describe(backend), "model": cfg.model or "bundled demo model",
        "outputs": outputs, "classes": names,
        "class_share_mean": {n: round(float(s), 6) for n, s in zip(names, mean)},
        "per_frame": per_frame,
    }


def _open_adapter(cfg: SegmentConfig, backend) -> Optional[OnlineAdapter]:
    """The online adaptation plug-in (``--adapt``), or None; model problems fail before any output."""
    if not cfg.adapt:
        return None
    return OnlineAdapter(backend, cfg.adapt, cfg.adapt_every, dict(cfg.adapt_options), reset=cfg.adapt_reset,
                         log=write_line)


def _save_adapted(run_dir: Path, cfg: SegmentConfig, adapter: OnlineAdapter, meta: ModelMeta) -> str:
    """The adapted weights as a checkpoint ``export`` takes: the input's metadata plus one provenance entry."""
    from sfda_deploy.checkpoint import save_checkpoint

    entry = {"command": "segment --adapt", "method": adapter.state.method.name, "source": cfg.source,
             "updates": adapter.state.updates, "resets": adapter.state.resets, "model": cfg.model}
    path = save_checkpoint(run_dir / "adapted.safetensors", adapter.state.predictor, meta.with_provenance(**entry))
    return path.name


def _finish(run_dir: Path, cfg: SegmentConfig, source: Source, backend, result: PipelineResult, outputs,
            sink: SegmentSink, adapter: Optional[OnlineAdapter]) -> dict[str, Any]:
    """Write ``summary.json`` (and the adapted checkpoint); returns the summary."""
    if result.frames == 0:
        raise SfdaError(f"no frame of {cfg.source} could be decoded ({source.unreadable} unreadable): "
                        "check the files")
    summary = build_summary(cfg, source, backend, result, outputs, sink.per_frame)
    if adapter is not None:
        summary["adaptation"] = adapter.summary(result.frames, result.wall_s)
        if cfg.save_adapted:
            summary["outputs"]["adapted"] = _save_adapted(run_dir, cfg, adapter, backend.meta)
    if sink.scorer is not None:
        summary["scores"] = sink.scorer.result()
    write_json(run_dir / "summary.json", summary)
    save_config(run_dir, cfg)
    return summary


def run_segment(cfg: SegmentConfig, run_dir: Optional[Path] = None, backend=None) -> Path:
    """Segment ``cfg.source`` with ``cfg.model``; returns the run directory.

    Args:
        run_dir: a new, not yet existing directory to write into instead of ``runs/segment/<name>`` (the
            demo's ``segment`` stage); it is removed again when the run fails.
        backend: an open backend of ``cfg.model`` to use (and leave open): a ``segment --ray`` worker
            keeps one for all its sources; default: load one for this run.
    """
    cfg, picked = _default_model(cfg)
    _check(cfg)
    if picked:
        say(picked)
    source = open_source(cfg.source, cfg.vid_stride, cfg.max_frames,  # bad inputs fail before any output
                         reconnect=reconnect_policy(cfg))
    shared, sink = backend is not None, None
    try:
        labels = open_labels(cfg.labels, source) if cfg.labels else None
        if not shared:
            backend = load_backend(cfg.model, cfg.backend, cfg.device, cfg.imgsz, cfg.batch, cfg.threads,
                                   cfg.ort_opt, adaptable=bool(cfg.adapt))
        say(describe_run(cfg.model, backend))
        size_note = size_mismatch_note(source.size, backend.input_size, backend.meta.input_size) if source.size else None
        if size_note:
            say(f"note: {size_note}")
        adapter = _open_adapter(cfg, backend)
        scorer = DriveScorer(labels, source, backend.meta.classes) if labels is not None else None
        if run_dir is None:
            run_dir = new_run_dir("segment", cfg.name)
        else:
            run_dir.mkdir()
        try:
            if adapter is not None:
                logger, echo = run_logger(run_dir), adapter.log
                adapter.log = lambda line: (echo(line), logger.info(line))
            log_link_to_run(source, run_dir, write_line)
            sink = SegmentSink(run_dir, source, backend.meta, cfg, scorer)
            with progress(total=source.total, unit="frame", desc=f"segment {backend.name}", leave=True) as bar:
                try:
                    result = run_pipeline(source, backend, sink, cfg.batch, on_done=lambda: bar.update(1),
                                          resize=cfg.resize, adapter=adapter)
                except DiskFullError:
                    discard_video(sink)  # its index is written last: it cannot be finished
                    raise
                finally:
                    outputs = sink.close()
            summary = _finish(run_dir, cfg, source, backend, result, outputs, sink, adapter)
            finish_run(run_dir)  # last: complete (an interrupted run's summary says partial: true)
        except DiskFullError as e:  # what was written stays valid; the run is marked failed
            record_full_disk(run_dir, e, cfg, source, sink)
            raise
        except SfdaError:  # no half-written run directory is left
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    finally:
        if backend is not None and not shared:
            backend.close()
        source.close()
    _report(run_dir, summary)
    if result.partial:
        raise KeyboardInterrupt  # the CLI reports it and exits 130; the outputs above are complete
    return run_dir


def _default_model(cfg: SegmentConfig) -> tuple[SegmentConfig, str]:
    """Without --model: the latest export, else the latest adapt run, else the bundled model (``latest_model``)."""
    if cfg.model is not None:
        return cfg, ""
    path, line = latest_model(cfg.device, adaptable=bool(cfg.adapt))
    return (dataclasses.replace(cfg, model=str(path)), line) if path else (cfg, line)


def describe_run(model: Optional[str], backend) -> str:
    """One line before the frames run: which model (the bundled one said as such), backend, device, threads."""
    meta = backend.meta
    if model is None:
        what = (f"the bundled DEMO source model ({meta.arch}, trained on the synthetic 'source' style only, "
                "not adapted; pass --model for yours)")
    else:
        what = f"{model} ({meta.arch}, {meta.class_set})"
    threads = getattr(backend, "threads", None)
    where = f"{backend.device}" + (f", {plural(threads, 'CPU thread')}" if threads and backend.device == "cpu" else "")
    return f"model: {what}; backend: {backend.name} on {where}"


def _report(run_dir: Path, s: dict[str, Any]) -> None:
    ms = s["ms_per_frame"]
    where = s["outputs"].get("video") or s["outputs"].get("overlays") or s["outputs"].get("masks") or ""
    say(f"{'PARTIAL (interrupted) ' if s['partial'] else ''}{plural(s['frames'], 'frame')}, "
               f"{s['fps_end_to_end']:.1f} fps end to end on {s['backend']} ({', '.join(s['providers'])}); "
               f"ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    if s["ended_early_at_frame"] is not None:
        say(f"the file ended early at frame {s['ended_early_at_frame']} (its header announces "
                   f"{s['frames_expected']}): segmented the frames it has")
    if s["unreadable_frames"] or s["dropped_frames"]:
        say(f"skipped {s['unreadable_frames']} unreadable and dropped {plural(s['dropped_frames'], 'frame')}")
    if link_report(s["reconnect"]):
        say(link_report(s["reconnect"]))
    for note in s["notes"]:
        say(f"note: {note}")
    if "adaptation" in s:
        a = s["adaptation"]
        say(f"adapt {a['method']}: {plural(a['updates'], 'update')} (every {plural(a['every'], 'frame')}), "
                   f"{plural(a['resets'], 'reset')}; "
                   f"{a['fps_with_adaptation']:.1f} fps with adaptation, ~{a['fps_without_adaptation_est']:.1f} "
                   f"without ({a['ms_per_update']:.1f} ms per update)")
    if "scores" in s:
        for line in format_scores(s["scores"]):
            say(line)
    say(f"outputs: {run_dir / where if where else run_dir} (summary: {run_dir / 'summary.json'})")
