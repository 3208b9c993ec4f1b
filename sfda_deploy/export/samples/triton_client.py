#!/usr/bin/env python3
"""Segment one image with the Triton model repository beside this file (tritonclient, HTTP).

    pip install "tritonclient[http]" numpy opencv-python-headless
    python client.py street.png                        # model @MODEL_NAME@ on localhost:8000 → street_mask.png
    python client.py street.png --model @MODEL_NAME@_trt --color --url triton-host:8000

The mask PNG holds one class index per pixel (the model's class order), at the image's size; --color
also writes the classes in their palette colours. The model's config tells the client what it needs
(its ``parameters``): whether the server-side graph takes 0-255 RGB (the ONNX model) or normalised input
(the TensorRT plan), the mean/std, the size and the palette. Written by sfda-deploy export --triton.
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import tritonclient.http as http


def parameters(config: dict) -> dict:
    return {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}


def prepare(rgb: np.ndarray, config: dict, params: dict) -> np.ndarray:
    """The input batch [1,3,H,W] float32 the model of ``config`` takes."""
    dims = [int(d) for d in config["input"][0]["dims"]]
    h, w = dims[-2:]
    if h < 0 or w < 0:
        h, w = json.loads(params["imgsz"])  # a dynamic model: run at its export size
    x = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if params.get("sfda_input") == "normalized":  # the TensorRT plan: normalise here
        if params.get("channel_order") == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(json.loads(params["mean"]), np.float32)) / np.asarray(json.loads(params["std"]), np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", default="@MODEL_NAME@")
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--out", type=Path, help="mask PNG (default: IMAGE_mask.png)")
    parser.add_argument("--color", action="store_true", help="also IMAGE_color.png in the palette colours")
    args = parser.parse_args()
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"error: cannot read {args.image}", file=sys.stderr)
        return 2
    client = http.InferenceServerClient(url=args.url)
    config = client.get_model_config(args.model)
    params = parameters(config)
    batch = prepare(bgr[..., ::-1], config, params)
    if int(config.get("max_batch_size", 0)) == 0:  # a static plan: its dims include the batch
        want = int(config["input"][0]["dims"][0])
        batch = np.repeat(batch, want, axis=0)
    request = http.InferInput(config["input"][0]["name"], list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    output = config["output"][0]["name"]
    result = client.infer(args.model, [request], outputs=[http.InferRequestedOutput(output)])
    values = result.as_numpy(output)[0]
    classes = values.argmax(0) if values.ndim == 3 else values  # logits [C,H,W] or a label map [H,W]
    mask = cv2.resize(classes.astype(np.uint8), (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = args.out or args.image.with_name(args.image.stem + "_mask.png")
    cv2.imwrite(str(out), mask)
    print(f"mask: {out} ({len(np.unique(mask))} classes in view)")
    if args.color:
        palette = np.asarray(json.loads(params["palette"]), np.uint8)
        color = out.with_name(args.image.stem + "_color.png")
        cv2.imwrite(str(color), palette[mask][..., ::-1])
        print(f"colours: {color}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
