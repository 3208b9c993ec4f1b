#!/usr/bin/env python3
"""Segment a video with DeepStream 7.x (JetPack 6) and the nvinfer config beside this file.

    filesrc → parsebin → nvv4l2decoder → nvstreammux → nvinfer → nvsegvisual → encoder → MP4
                                                        └ probe: one class-mask PNG per frame (masks/)

Usage (in this folder, on the Jetson or in the DeepStream 7.x container):
    python3 deepstream_segment.py drive.mp4                 # writes segmented.mp4 and masks/
    python3 deepstream_segment.py drive.mp4 --display       # on screen instead of segmented.mp4
    python3 deepstream_segment.py drive.mp4 --no-masks --out seg.mp4

Masks hold the class index per pixel (labels.txt order; 255 where no class reached the config's
segmentation-threshold) at the network's input size. Needs the DeepStream Python bindings (pyds),
GStreamer's Python bindings (python3-gi) and OpenCV (python3-opencv) or NumPy only without masks.
Written by sfda-deploy export --deepstream; see README.md beside it.
"""
import argparse
import platform
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
import pyds  # noqa: E402
from gi.repository import GLib, Gst  # noqa: E402

HERE = Path(__file__).resolve().parent


def network_size(config: Path) -> tuple[int, int]:
    """(H, W) from the config's infer-dims=3;H;W."""
    for line in config.read_text().splitlines():
        if line.startswith("infer-dims="):
            _, h, w = line.split("=", 1)[1].split(";")
            return int(h), int(w)
    raise SystemExit(f"{config} has no infer-dims line")


def make(factory: str, name: str, **props):
    element = Gst.ElementFactory.make(factory, name)
    if element is None:
        raise SystemExit(f"GStreamer element {factory} is missing: is DeepStream installed (and GST_PLUGIN_PATH)?")
    for key, value in props.items():
        element.set_property(key.replace("_", "-"), value)
    return element


def mask_probe(mask_dir):
    """A buffer probe on nvinfer's src pad: every frame's class map (NvDsInferSegmentationMeta) as a PNG."""
    import numpy as np

    write = None
    if mask_dir is not None:
        import cv2

        mask_dir.mkdir(parents=True, exist_ok=True)
        write = cv2.imwrite

    def probe(pad, info):
        buffer = info.get_buffer()
        batch = pyds.gst_buffer_get_nvds_batch_meta(hash(buffer))
        frames = batch.frame_meta_list
        while frames is not None:
            frame = pyds.NvDsFrameMeta.cast(frames.data)
            users = frame.frame_user_meta_list
            while users is not None:
                user = pyds.NvDsUserMeta.cast(users.data)
                if user.base_meta.meta_type == pyds.NVDSINFER_SEGMENTATION_META:
                    seg = pyds.NvDsInferSegmentationMeta.cast(user.user_meta_data)
                    classes = np.array(pyds.get_segmentation_masks(seg), copy=True, dtype=np.int32)
                    if write is not None:
                        mask = np.where(classes < 0, 255, classes).astype(np.uint8)
                        write(str(mask_dir / f"frame_{frame.frame_num:06d}.png"), mask)
                users = users.next
            frames = frames.next
        return Gst.PadProbeReturn.OK

    return probe


def build(args) -> Gst.Pipeline:
    height, width = network_size(args.config)
    pipeline = Gst.Pipeline.new("segment")
    source = make("filesrc", "source", location=str(args.video))
    parse = make("parsebin", "parse")
    decoder = make("nvv4l2decoder", "decoder")
    mux = make("nvstreammux", "mux", batch_size=1, width=args.width, height=args.height,
               batched_push_timeout=40000)
    infer = make("nvinfer", "infer", config_file_path=str(args.config))
    visual = make("nvsegvisual", "visual", batch_size=1, width=width, height=height)
    convert = make("nvvideoconvert", "convert")
    elements = [source, parse, decoder, mux, infer, visual, convert]
    if args.display:
        tail = [make("nvegltransform", "transform")] if platform.machine() == "aarch64" else []
        tail.append(make("nveglglessink", "sink", sync=False))
    else:
        caps = make("capsfilter", "caps", caps=Gst.Caps.from_string("video/x-raw(memory:NVMM), format=I420"))
        tail = [caps, make("nvv4l2h264enc", "encoder", bitrate=4000000), make("h264parse", "h264parse"),
                make("qtmux", "mux_mp4"), make("filesink", "sink", location=str(args.out), sync=False)]
    for element in elements + tail:
        pipeline.add(element)
    source.link(parse)
    parse.connect("pad-added", lambda _, pad: pad.link(decoder.get_static_pad("sink")))
    decoder.get_static_pad("src").link(mux.request_pad_simple("sink_0") if hasattr(mux, "request_pad_simple")
                                       else mux.get_request_pad("sink_0"))
    chain = [mux, infer, visual, convert] + tail
    for a, b in zip(chain, chain[1:]):
        if not a.link(b):
            raise SystemExit(f"cannot link {a.get_name()} → {b.get_name()}")
    infer.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, mask_probe(args.masks))
    return pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path, help="H.264/H.265 video file (MP4, MKV or elementary stream)")
    parser.add_argument("--config", type=Path, default=HERE / "config_infer_primary_segmentation.txt")
    parser.add_argument("--out", type=Path, default=Path("segmented.mp4"), help="overlay video to write")
    parser.add_argument("--masks", type=Path, default=Path("masks"), help="folder of class-mask PNGs")
    parser.add_argument("--no-masks", dest="masks", action="store_const", const=None)
    parser.add_argument("--display", action="store_true", help="show on screen instead of writing --out")
    parser.add_argument("--width", type=int, default=1920, help="nvstreammux output width")
    parser.add_argument("--height", type=int, default=1080, help="nvstreammux output height")
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"error: {args.video} does not exist", file=sys.stderr)
        return 2
    args.config = args.config.resolve()  # nvinfer reads the config's relative paths from the config's folder
    Gst.init(None)
    pipeline = build(args)
    loop = GLib.MainLoop()
    bus = pipeline.get_bus()
    bus.add_signal_watch()

    def on_message(_, message):
        if message.type == Gst.MessageType.EOS:
            loop.quit()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            print(f"error: {error.message} ({debug})", file=sys.stderr)
            loop.quit()

    bus.connect("message", on_message)
    pipeline.set_state(Gst.State.PLAYING)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
