"""Export's parity gate: the frames it runs on (``--verify-data``, else the checkpoint's own target data,
else generated ones), each exported file's fidelity against the torch reference, and the gate itself
(fp32 files must agree on ``AGREEMENT_GATE`` % of pixels).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sfda_deploy.data import frames as F
from sfda_deploy.data.cityscapes import split_dir
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.verify import AGREEMENT_GATE, compare_runners, format_fidelity, open_runner
from sfda_deploy.messages import plural, say

VERIFY_FRAMES = 8  # frames of the parity gate (generated ones when --verify-data is not given)


def gate(name: str, result: dict, fp32: bool, on: str = "") -> None:
    say(format_fidelity(name, result, on))
    if fp32 and result["argmax_agreement"] < AGREEMENT_GATE:
        raise SfdaError(
            f"{name} agrees with torch on only {result['argmax_agreement']:.4f}% of pixels (< {AGREEMENT_GATE}%): "
            "the export is not faithful; see report.json in the run directory and report the architecture"
        )


def parity(reference, path: Path, images, labels, desc: str, device: str = "cpu") -> dict:
    """Fidelity of the model file at ``path`` (run by its runtime backend) against the torch reference."""
    runner = open_runner(path, device)
    try:
        return compare_runners(reference, runner, images, labels, desc=desc)
    finally:
        runner.close()


def default_verify_source(meta) -> Optional[Path]:
    """The target data the checkpoint was adapted (or trained) on, from its provenance, if it is still
    on this machine: its labelled val images first (the gate then reports ΔmIoU), else the split it
    used, else the root."""
    for entry in reversed(meta.provenance):
        if not entry.get("data_root"):
            continue
        root = Path(entry["data_root"])
        for folder in (split_dir(root, "val"), split_dir(root, str(entry.get("split", "train"))), root):
            if folder.is_dir():
                return folder
    return None


def verify_frames(verify_data: Optional[str], meta, imgsz) -> tuple[list, Optional[str]]:
    """The parity gate's frames: ``verify_data`` (``--verify-data``) when given; else a few of the checkpoint's own target images
    (``default_verify_source``; generated frames when those cannot be used at this size); else generated."""
    if verify_data:
        return F.read_frames(verify_data, imgsz, VERIFY_FRAMES, meta.classes), str(verify_data)
    source = default_verify_source(meta)
    if source is not None:
        try:
            return F.read_frames(source, imgsz, VERIFY_FRAMES, meta.classes), str(source)
        except SfdaError as e:
            say(f"note: not verifying on the checkpoint's target data ({e}); using generated frames")
    return F.synthetic_frames(imgsz, VERIFY_FRAMES), None


def frames_used(count: int, source: Optional[str], labelled: bool) -> str:
    """What a parity figure was measured on, for the console: ``"8 images of DIR (mIoU on these 8 only)"``."""
    if source is None:
        return f"{plural(count, 'generated frame')} (no labels: no mIoU; pass --verify-data DIR for real images)"
    scope = f" (mIoU on these {count} only; evaluate scores the whole split)" if labelled else ""
    return f"{plural(count, 'image')} of {source}{scope}"
