"""A strict reader of Gst-nvinfer configuration files, for the tests of ``export --deepstream``.

The keys and their value types are transcribed from nvinfer's documented property parser
(``gstnvinfer_property_parser.h`` of DeepStream 6.x-8.0, the ``[property]`` group's ``CONFIG_GROUP_INFER_*``
names) independently of the writer: any key not listed, any value of the wrong type, or a key given
twice fails. Values follow GLib's key-file rules (``;``-separated lists, ``#`` comments).
"""
from __future__ import annotations

INT, FLOAT, STR, INTS, FLOATS, STRS = "int", "float", "str", "ints", "floats", "strs"

PROPERTY_KEYS = {
    # GStreamer element configuration
    "gie-unique-id": INT, "process-mode": INT, "interval": INT, "labelfile-path": STR, "gpu-id": INT,
    "secondary-reinfer-interval": INT, "output-tensor-meta": INT, "enable-dla": INT, "use-dla-core": INT,
    "disable-output-host-copy": INT, "auto-inc-mem": INT, "max-gpu-mem-per": INT,
    "dump-input-tensor": INT, "dump-output-tensor": INT,
    # runtime engine parameters
    "batch-size": INT, "tensor-meta-pool-size": INT, "network-mode": INT, "model-engine-file": STR,
    "int8-calib-file": STR, "workspace-size": INT,
    # generic model parameters
    "output-blob-names": STRS, "is-classifier": INT, "network-type": INT, "force-implicit-batch-dim": INT,
    "infer-dims": INTS, "output-io-formats": STRS, "layer-device-precision": STRS,
    # preprocessing
    "model-color-format": INT, "net-scale-factor": FLOAT, "offsets": FLOATS, "mean-file": STR,
    "maintain-aspect-ratio": INT, "symmetric-padding": INT, "scaling-filter": INT, "scaling-compute-hw": INT,
    "network-input-order": INT, "input-tensor-from-meta": INT,
    # custom implementations
    "custom-lib-path": STR, "parse-bbox-func-name": STR, "parse-bbox-instance-mask-func-name": STR,
    "engine-create-func-name": STR, "parse-classifier-func-name": STR, "custom-network-config": STR,
    "parse-func": INT,
    # model files
    "model-file": STR, "proto-file": STR, "uff-file": STR, "uff-input-order": INT, "input-dims": INTS,
    "uff-input-dims": INTS, "uff-input-blob-name": STR, "tlt-encoded-model": STR, "tlt-model-key": STR,
    "onnx-file": STR,
    # detector, classifier, segmentation
    "num-detected-classes": INT, "enable-dbscan": INT, "cluster-mode": INT,
    "classifier-type": STR, "classifier-threshold": FLOAT, "classifier-async-mode": INT,
    "segmentation-threshold": FLOAT, "segmentation-output-order": INT, "output-instance-mask": INT,
    # secondary-mode filters
    "input-object-min-width": INT, "input-object-min-height": INT, "input-object-max-width": INT,
    "input-object-max-height": INT, "operate-on-gie-id": INT, "operate-on-class-ids": INTS,
    "filter-out-class-ids": INTS,
}
# What a primary semantic-segmentation nvinfer on an ONNX model cannot do without.
SEGMENTATION_REQUIRED = ("onnx-file", "network-type", "num-detected-classes", "infer-dims", "batch-size",
                         "network-mode", "output-blob-names", "model-color-format", "net-scale-factor")


class ConfigError(ValueError):
    pass


def _value(key: str, kind: str, text: str):
    parts = [p for p in text.split(";") if p != ""] if kind in (INTS, FLOATS, STRS) else [text]
    try:
        if kind in (INT, INTS):
            values = [int(p) for p in parts]
        elif kind in (FLOAT, FLOATS):
            values = [float(p) for p in parts]
        else:
            values = parts
    except ValueError:
        raise ConfigError(f"{key}={text}: not of type {kind}") from None
    if not values:
        raise ConfigError(f"{key} is empty")
    return values if kind in (INTS, FLOATS, STRS) else values[0]


def parse_nvinfer_config(text: str) -> dict:
    """``{"property": {key: typed value}}``; raises ``ConfigError`` on anything nvinfer does not document."""
    groups: dict[str, dict] = {}
    group = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
            if group != "property" and not group.startswith("class-attrs-"):
                raise ConfigError(f"line {number}: unknown group [{group}]")
            if group in groups:
                raise ConfigError(f"line {number}: group [{group}] given twice")
            groups[group] = {}
            continue
        if group is None or "=" not in line:
            raise ConfigError(f"line {number}: {line!r} is outside a group or not key=value")
        key, value = (s.strip() for s in line.split("=", 1))
        if group != "property":
            raise ConfigError(f"line {number}: this reader checks the [property] group only")
        if key not in PROPERTY_KEYS:
            raise ConfigError(f"line {number}: unknown nvinfer key {key!r}")
        if key in groups[group]:
            raise ConfigError(f"line {number}: {key} given twice")
        groups[group][key] = _value(key, PROPERTY_KEYS[key], value)
    if "property" not in groups:
        raise ConfigError("no [property] group")
    return groups


def check_segmentation(properties: dict) -> None:
    """The keys a primary ONNX semantic-segmentation model needs, with values nvinfer accepts."""
    missing = [k for k in SEGMENTATION_REQUIRED if k not in properties]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    if properties["network-type"] != 2:
        raise ConfigError("network-type must be 2 (segmentation)")
    if properties["network-mode"] not in (0, 1, 2):
        raise ConfigError("network-mode must be 0 (FP32), 1 (INT8) or 2 (FP16)")
    if properties["model-color-format"] not in (0, 1, 2):
        raise ConfigError("model-color-format must be 0 (RGB), 1 (BGR) or 2 (GRAY)")
    if len(properties["infer-dims"]) != 3:
        raise ConfigError("infer-dims must be C;H;W")
    if "offsets" in properties and len(properties["offsets"]) != properties["infer-dims"][0]:
        raise ConfigError("offsets needs one value per channel")
