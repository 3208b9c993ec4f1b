"""What the export library reads of an export's options: one typed object, built by the export command.

The library below ``commands/`` never sees the command's ``ExportConfig`` (docs/contracts.md): the command
picks these fields from it once (``ExportSettings.pick``) and hands the object to the engine builder
(``tensorrt.build_engine``), the targets' checks (``targets.check_targets``) and their writers
(``TargetJob.settings``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class ExportSettings:
    checkpoint: Optional[str] = None    # the file exported (a .safetensors checkpoint, or an ONNX for --trt)
    device: str = "cpu"                 # where an engine is built (cuda:N)
    batch: int = 1                      # a static graph's batch; a dynamic one's usual batch
    dynamic: bool = False               # batch and H W free in the graph
    max_batch: Optional[int] = None     # a dynamic engine profile's largest batch (default: batch)
    max_imgsz: Optional[tuple[int, int]] = None  # its largest H W (default: the export size)
    workspace: float = 4.0              # GB for TensorRT's builder
    opset: int = 18
    output: str = "logits"              # logits | mask
    mask_dtype: str = "int32"           # int32 | uint8
    fp16: bool = False
    int8: bool = False
    targets: tuple[str, ...] = ()       # deployment targets (export/targets.py)
    target_options: dict[str, Any] = field(default_factory=dict)  # TARGET.OPTION: value

    @classmethod
    def pick(cls, options: Any) -> "ExportSettings":
        """These fields, by name, from any object that has them (the export command's config)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})
