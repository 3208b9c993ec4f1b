"""Frame sources (``segment``'s streaming reader): an image, a directory, a glob, a .txt list, a video
file, a webcam, a stream URL. Images decode with ``data.base.decode_image``.

``open_source(spec)`` checks the source up front (so a bad one fails before any output is written)
and returns a ``Source``: iterating it yields ``(frame, FrameInfo)`` with ``frame`` RGB uint8
``[H,W,3]``. A frame that cannot be decoded is skipped and counted in ``source.unreadable``; it is
never fatal.

Live sources (webcams, streams) are read through ``data.live.LiveLink``: a watchdog on each read and
reconnection with backoff after a drop (``ReconnectPolicy``); ``source.link`` counts the drops.
"""
from __future__ import annotations

import glob as globlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from sfda_deploy.data.base import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, decode_image, list_images
from sfda_deploy.data.live import LinkStats, LiveLink, ReconnectPolicy
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import say

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
MAX_FAILED_READS = 30  # consecutive undecodable video frames before a file counts as ended
REOPEN_TIMEOUT_S = 5.0  # how long one reconnect try waits for a live source to open


@dataclass(frozen=True)
class FrameInfo:
    """Where a frame came from. ``timestamp``: seconds into the video (wall clock for live sources)."""

    index: int
    name: str
    path: Optional[str] = None
    timestamp: Optional[float] = None


class Source:
    """A checked source. Attributes: ``kind`` (images|video|webcam|stream), ``fps`` (None for images),
    ``size`` ``(H, W)`` of the first frame, ``total`` frames to expect (None when unknown),
    ``available`` frames in the file or folder before ``vid_stride``/``max_frames`` (None when unknown),
    ``unreadable`` frames skipped so far, ``live`` (frames may be dropped when inference lags),
    ``link`` (live sources, once iterated: the ``LinkStats`` of drops and reconnects; None otherwise) and
    ``log`` (where a live source's drop/reconnect lines go)."""

    def __init__(self, spec: str, kind: str, *, paths=None, capture=None, first=None,
                 fps=None, total=None, vid_stride: int = 1, max_frames: Optional[int] = None,
                 reopen: Optional[Callable[[], cv2.VideoCapture]] = None,
                 reconnect: Optional[ReconnectPolicy] = None):
        self.spec, self.kind = spec, kind
        self.paths, self.capture, self._first = paths, capture, first
        self.fps, self.vid_stride, self.max_frames = fps, vid_stride, max_frames
        self.live = kind in ("webcam", "stream")
        self.reopen, self.reconnect = reopen, reconnect or ReconnectPolicy()
        self.log: Callable[[str], None] = say
        self.link: Optional[LinkStats] = None
        self._live_link: Optional[LiveLink] = None
        self.unreadable = 0
        self.ended_early_at: Optional[int] = None  # a cut-short video file: the frame its data stops at
        self.size = first.shape[:2] if first is not None else None
        self.available = total
        if total is not None:
            total = -(-total // vid_stride)
            total = min(total, max_frames) if max_frames else total
        self.total = total

    def __iter__(self) -> Iterator[tuple[np.ndarray, FrameInfo]]:
        frames = self._images() if self.kind == "images" else self._live() if self.live else self._video()
        for n, item in enumerate(frames):
            if self.max_frames is not None and n >= self.max_frames:
                break
            yield item

    def _images(self):
        for i, path in enumerate(self.paths[:: self.vid_stride]):
            frame = decode_image(path)
            if frame is None:
                self.unreadable += 1
                continue
            yield frame, FrameInfo(i, path.stem, str(path))

    def _live(self):
        """A webcam's or stream's frames through a ``LiveLink`` (watchdog, reconnects); ``vid_stride``
        keeps every N-th frame received."""
        what = f"{self.kind} {self.spec}"
        self._live_link = link = LiveLink(what, self.capture, self._first, self.reopen, self.reconnect, self.log)
        self.capture, self._first, self.link, start = None, None, link.stats, time.time()
        kept = (frame for n, frame in enumerate(link.frames()) if n % self.vid_stride == 0)
        for index, frame in enumerate(kept):
            yield frame, FrameInfo(index, f"frame_{index:06d}", self.spec, round(time.time() - start, 6))

    def cancel(self) -> None:
        """Stop a live source waiting for frames or a reconnect (the run is ending); no-op otherwise."""
        if self._live_link is not None:
            self._live_link.cancel()

    def _video(self):
        cap, failed, index = self.capture, 0, 0
        pending = self._first
        try:
            while True:
                if pending is not None:
                    frame, pending = pending, None
                else:
                    for _ in range(self.vid_stride - 1):  # grab() skips without decoding
                        cap.grab()
                    before = cap.get(cv2.CAP_PROP_POS_FRAMES)
                    ok, bgr = cap.read()
                    if not ok or bgr is None:
                        if self._ended_early(before) or not self._more_to_read(failed):
                            break
                        failed += 1
                        self.unreadable += 1
                        continue
                    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                failed = 0
                stamp = index * self.vid_stride / (self.fps or 30.0)
                yield frame, FrameInfo(index, f"frame_{index:06d}", self.spec, round(stamp, 6))
                index += 1
        finally:
            cap.release()

    def _ended_early(self, before: float) -> bool:
        """After a failed read of a file: the position did not move although its header announces more
        frames, so the data stops here (a cut-short file); records ``ended_early_at`` (frames in the file)."""
        pos, count = self.capture.get(cv2.CAP_PROP_POS_FRAMES), self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        if pos > before or not 0 < pos < count:
            return False
        self.ended_early_at = int(pos)
        return True

    def _more_to_read(self, failed: int) -> bool:
        """After a failed read: is it a bad frame (keep going) or the end (stop)?"""
        if failed >= MAX_FAILED_READS:
            return False
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return count > 0 and self.capture.get(cv2.CAP_PROP_POS_FRAMES) < count - 1

    def close(self) -> None:
        self.cancel()
        if self.capture is not None:
            self.capture.release()


def _open_capture(target, timeout: float, what: str) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` opened in a helper thread so an unreachable stream cannot hang us."""
    box: dict = {}

    def _open():
        ms = int(timeout * 1000)
        if isinstance(target, str):
            box["cap"] = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            box["cap"] = cv2.VideoCapture(target)

    thread = threading.Thread(target=_open, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout)
    cap = box.get("cap")
    if cap is None or not cap.isOpened():
        if cap is not None:
            cap.release()
        # FFmpeg's own open timeout is ours too: whichever gives up first, a silent server waited it out
        silent = thread.is_alive() or time.monotonic() - start >= 0.9 * timeout
        why = f"no answer within {timeout:g} s" if silent else "it cannot be opened"
        raise SfdaError(f"{what} is unreachable ({why}): check the address/device and that it is streaming")
    return cap


def _first_frame(cap: cv2.VideoCapture, what: str, fix: str) -> np.ndarray:
    ok, bgr = cap.read()
    if not ok or bgr is None:
        cap.release()
        raise SfdaError(f"{what} has no readable frame: {fix}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video(spec: str, target, kind: str, timeout: float, **kw) -> Source:
    what = {"video": f"video {spec}", "webcam": f"webcam {spec}", "stream": f"stream {spec}"}[kind]
    if kind == "video":
        cap = cv2.VideoCapture(str(target))
        if not cap.isOpened():
            cap.release()
            raise SfdaError(f"{what} cannot be opened (truncated, empty or not a video): "
                            "check the file, or re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)")
    else:
        cap = _open_capture(target, timeout, what)
    first = _first_frame(cap, what, "the file is zero-frame or truncated; re-encode or replace it"
                         if kind == "video" else "check that it is streaming")
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    reopen = None if kind == "video" else (lambda: _open_capture(target, REOPEN_TIMEOUT_S, what))
    return Source(spec, kind, capture=cap, first=first, fps=fps if fps and fps > 0 else 30.0,
                  total=count if count > 0 else None, reopen=reopen, **kw)


def _image_list(spec: str, paths: list[Path], **kw) -> Source:
    """Images to read; refused before any output when none of them decodes (a folder of corrupt files)."""
    if not any(decode_image(p) is not None for p in paths[:: kw.get("vid_stride", 1)]):
        raise SfdaError(f"none of the {len(paths)} image(s) of {spec} can be decoded (e.g. {paths[0].name}): "
                        "they are corrupt or not images; check the files")
    return Source(spec, "images", paths=paths, total=len(paths), **kw)


def _read_list(path: Path) -> list[Path]:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    entries = [Path(line) for line in lines if line and not line.startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in entries]


def open_source(spec: Optional[str], vid_stride: int = 1, max_frames: Optional[int] = None,
                timeout: float = 10.0, reconnect: Optional[ReconnectPolicy] = None) -> Source:
    """Check and open a source (see module doc). Bad sources raise a one-line ``SfdaError``.

    ``reconnect``: how a webcam or stream recovers from a drop (default ``ReconnectPolicy()``: after 2 s
    without a frame, 5 tries); files never reconnect."""
    if not spec:
        raise SfdaError("no SOURCE given: pass an image, a folder, a glob, a .txt list, a video, "
                        "a webcam index (0) or a stream URL")
    if vid_stride < 1:
        raise SfdaError(f"--vid-stride must be >= 1, got {vid_stride}")
    if max_frames is not None and max_frames < 1:
        raise SfdaError(f"--max-frames must be >= 1, got {max_frames}")
    kw = {"vid_stride": vid_stride, "max_frames": max_frames}
    live_kw = {**kw, "reconnect": reconnect}
    if spec.isdigit() and not Path(spec).exists():
        return _video(spec, int(spec), "webcam", timeout, **live_kw)
    if spec.lower().startswith(STREAM_PREFIXES):
        return _video(spec, spec, "stream", timeout, **live_kw)
    path = Path(spec)
    if any(c in spec for c in "*?[") and not path.exists():
        paths = sorted(Path(p) for p in globlib.glob(spec, recursive=True)
                       if p.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise SfdaError(f"the pattern {spec} matches no images ({', '.join(IMAGE_EXTENSIONS)}): check it")
        return _image_list(spec, paths, **kw)
    if path.is_dir():
        paths = list_images(path, recursive=False)
        if not paths:
            raise SfdaError(f"directory {path} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            "point SOURCE at a folder of frames, or pass a video file")
        return _image_list(spec, paths, **kw)
    if not path.is_file():
        raise SfdaError(f"source {spec} does not exist: pass an image, folder, glob, .txt list, "
                        "video, webcam index or stream URL")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        paths = _read_list(path)
        if not paths:
            raise SfdaError(f"list {path} names no files: write one image path per line")
        return _image_list(spec, paths, **kw)
    if suffix in VIDEO_EXTENSIONS:
        return _video(spec, path, "video", timeout, **kw)
    if decode_image(path) is not None:
        return _image_list(spec, [path], **kw)
    if suffix not in IMAGE_EXTENSIONS:  # an unknown extension may still hold a video
        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if ok:
            return _video(spec, path, "video", timeout, **kw)
    raise SfdaError(f"{path} is not a readable image or video: check the file "
                    f"(images: {', '.join(IMAGE_EXTENSIONS[:4])}...; videos: {', '.join(VIDEO_EXTENSIONS[:4])}...)")
