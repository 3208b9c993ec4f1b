"""A real MJPEG-over-HTTP server on 127.0.0.1 for the live-source tests (what IP cameras serve).

Each frame carries its serial number as 16 black/white blocks along its top edge, so a reader can tell
which frames it got (and that none came twice). ``outages`` make the stream fail after a given serial:

- ``down``: open connections are closed and new ones get ``503`` for ``seconds`` (a camera reset);
- ``stall``: connections stay open but nothing is sent for ``seconds``, new ones included (a network
  hiccup that raises no error).

Every loop is bounded: a connection sends at most ``max_frames`` frames, and ``close()`` ends them all.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BITS, BLOCK = 16, 8
SIZE = (64, BITS * BLOCK)  # H, W


def serial_frame(serial: int) -> np.ndarray:
    """BGR ``[64,128,3]``: the serial's bits as blocks on top of a gradient."""
    h, w = SIZE
    image = np.repeat(np.linspace(40, 200, w, dtype=np.uint8)[None, :, None], h, 0).repeat(3, 2)
    for bit in range(BITS):
        image[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if serial >> bit & 1 else 0
    return image


def read_serial(frame: np.ndarray) -> int:
    """The serial number written by ``serial_frame`` (RGB or BGR, after JPEG)."""
    blocks = [frame[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() for b in range(BITS)]
    return sum(1 << b for b, v in enumerate(blocks) if v > 128)


@dataclass(frozen=True)
class Outage:
    after_serial: int   # the outage starts once this frame was sent
    seconds: float
    kind: str = "down"  # down | stall


class MjpegServer:
    """``with MjpegServer(fps=10, outages=[Outage(20, 5.0)]) as server: open_source(server.url)``.

    ``sent`` lists the serials sent (each once, whatever the connection); ``returned_at`` the monotonic
    time each outage ended; ``connections`` counts the streams opened."""

    def __init__(self, fps: float = 10.0, outages: tuple[Outage, ...] = (), max_frames: int = 2000):
        self.interval, self.max_frames = 1.0 / fps, max_frames
        self.pending = sorted(outages, key=lambda o: o.after_serial)
        self.sent: list[int] = []
        self.returned_at: list[float] = []
        self.connections = 0
        self.down_until = self.stall_until = 0.0
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "MjpegServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _next_frame(self) -> tuple[int, bytes] | None:
        """The next serial and its JPEG, starting an outage when its serial was reached."""
        with self.lock:
            serial = len(self.sent)
            self.sent.append(serial)
            if self.pending and serial >= self.pending[0].after_serial:
                outage = self.pending.pop(0)
                until = time.monotonic() + outage.seconds
                if outage.kind == "down":
                    self.down_until = until
                else:
                    self.stall_until = until
                self.returned_at.append(until)
        ok, jpeg = cv2.imencode(".jpg", serial_frame(serial), [cv2.IMWRITE_JPEG_QUALITY, 95])
        return serial, jpeg.tobytes()

    def _wait_out_stall(self) -> None:
        while time.monotonic() < self.stall_until and not self.closed.is_set():
            time.sleep(0.02)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._wait_out_stall()
                if time.monotonic() < server.down_until or server.closed.is_set():
                    self.send_error(503, "camera restarting")
                    return
                with server.lock:
                    server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for _ in range(server.max_frames):
                    server._wait_out_stall()
                    if time.monotonic() < server.down_until or server.closed.is_set():
                        return  # the camera went away: the connection closes
                    serial, jpeg = server._next_frame()
                    part = (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                            + jpeg + b"\r\n")
                    try:
                        self.wfile.write(part)
                        self.wfile.flush()
                    except OSError:  # the reader hung up (a reconnect abandons its old connection)
                        return
                    time.sleep(server.interval)

        return Handler
