"""What ``segment`` does when the road is rough: a live source that drops (its lines and counts) and a disk
that fills up mid-run (keep what was written, drop the unfinished video, mark the run failed, write what
summary fits).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from sfda_deploy.config import SegmentConfig
from sfda_deploy.data.live import ReconnectPolicy
from sfda_deploy.data.sources import Source
from sfda_deploy.disk import DiskFullError
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural
from sfda_deploy.runs import finish_run, run_logger, write_json


def reconnect_policy(cfg: SegmentConfig) -> ReconnectPolicy:
    return ReconnectPolicy(cfg.reconnect_after, cfg.reconnect_tries)


def log_link_to_run(source: Source, run_dir: Path, echo: Callable[[str], None]) -> None:
    """A live source's drop/reconnect lines go to the console (``echo``) and the run's ``log.txt``."""
    if source.live:
        logger = run_logger(run_dir)
        source.log = lambda line: (echo(line), logger.info(line))


def link_summary(source: Source, cfg: SegmentConfig) -> Optional[dict[str, Any]]:
    """``summary.json["reconnect"]``: the settings and counts of a live source (None for files)."""
    if not source.live:
        return None
    counts = source.link.as_dict() if source.link is not None else {}
    return {"after_s": cfg.reconnect_after, "tries": cfg.reconnect_tries, **counts}


def link_report(link: Optional[dict[str, Any]]) -> Optional[str]:
    """One closing line when the live source dropped (None when it never did)."""
    if not link or not link.get("drops"):
        return None
    ended = "; gave up, the run ended there" if link["gave_up"] else ""
    return (f"live source: {plural(link['drops'], 'drop')}, {plural(link['reconnects'], 'reconnect')}, "
            f"~{plural(link['frames_lost'], 'frame')} lost, longest gap {link['longest_gap_s']:.1f} s{ended}")


def discard_video(sink) -> None:
    """The overlay video cannot be finished on a full disk (its index is written last): delete its
    temporary, which also gives the summary room."""
    if sink is not None and getattr(sink, "video", None) is not None:
        sink.video.abort()


def record_full_disk(run_dir: Path, error: DiskFullError, cfg: SegmentConfig, source: Source, sink) -> None:
    """After a full disk: files already written stay (each was written whole under its final name), the
    unfinished video is gone, ``summary.json`` says what was done if there is room, the run is marked failed."""
    discard_video(sink)
    masks = sorted(p.name for p in (run_dir / "masks").glob("*.png")) if (run_dir / "masks").is_dir() else []
    summary = {"failed": str(error), "source": cfg.source, "source_kind": source.kind,
               "frames_segmented": len(sink.per_frame) if sink is not None else 0,
               "masks_written": len(masks), "overlay_video": None, "reconnect": link_summary(source, cfg)}
    try:
        write_json(run_dir / "summary.json", summary)
    except SfdaError:
        pass  # no room even for the summary: the FAILED mark below (or INCOMPLETE) still tells the truth
    finish_run(run_dir, f"error: {error}")
