"""Deployment targets of ``export``: registered writers, each with its own options.

A target turns the exported model into what one serving stack takes as it is: ``deepstream`` (a folder
for nvinfer: config, labels, sample app) and ``triton`` (a model repository). Each is a ``Target``:
its name (the CLI flag ``--<name>``), a one-line help, a frozen dataclass of options (``--target-set
<name>.<option>=VALUE`` or the ``target_options`` mapping of ``--config``) and the module whose
``write(job)`` writes it. Writers run after the ONNX (and engine) passed their gates, each into its
own folder of the run directory, and are imported only when used.

A new target: ``register(Target(...))`` with a module that defines ``write(job: TargetJob) -> dict``.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from sfda_deploy.classes import suggest
from sfda_deploy.config_values import build_options
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.export_settings import ExportSettings
from sfda_deploy.runs import default_mode


@dataclass(frozen=True)
class DeepStreamOptions:
    segmentation_threshold: float = 0.0  # nvinfer: a pixel whose best class score is below this gets -1
    gpu_id: int = 0
    interval: int = 0                    # nvinfer: frames skipped between two inferences


@dataclass(frozen=True)
class TritonOptions:
    model_name: Optional[str] = None     # default: the export's run name (letters, digits, _ and -)
    max_batch_size: int = 8              # Triton's dynamic batcher forms batches up to this
    instances: int = 1                   # model instances per device
    instance_kind: str = "auto"          # auto (gpu where this machine has one) | gpu | cpu
    max_queue_delay_us: int = 100        # how long the batcher waits to fill a batch
    ort_tensorrt: bool = False           # ONNX Runtime's TensorRT execution accelerator (GPU instances)


@dataclass(frozen=True)
class Target:
    name: str
    help: str
    options: type
    module: str      # defines ``write(job: TargetJob) -> dict`` (what was written, for report.json)


@dataclass
class TargetJob:
    """What a writer gets: the export's settings and model, where to write and what was written so far."""
    settings: ExportSettings
    model: Any               # the torch model (eval mode), for the target's own graph and its parity gate
    meta: Any                # the checkpoint's ModelMeta
    imgsz: tuple[int, int]
    run_dir: Path
    files: dict[str, str]    # report["files"]: onnx, engine, ...
    images: Any              # the parity gate's uint8 frames [N,H,W,3]
    options: Any             # the target's options dataclass


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} is registered twice")
    TARGETS[target.name] = target
    return target


register(Target("deepstream", "Also a folder for DeepStream's nvinfer (config, labels, sample app; 0-255 RGB "
                "input with the normalisation inside the graph, FP32 class scores out).", DeepStreamOptions,
                "sfda_deploy.export.deepstream"))
register(Target("triton", "Also a Triton model repository (ONNX Runtime model, plus a TensorRT plan model when "
                "an engine was built) and a client.py sample.", TritonOptions, "sfda_deploy.export.triton"))

def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SfdaError(f"unknown export target '{name}'{suggest(name, list(TARGETS))}: use "
                        f"{', '.join(TARGETS)}")
    return TARGETS[name]


def _flat(options: dict[str, Any]) -> dict[str, Any]:
    """``{"triton": {"instances": 2}}`` and ``{"triton.instances": 2}`` alike → the flat form."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def target_options(targets: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """Each asked target's options dataclass, every value checked (``check_values``).

    Raises:
        SfdaError: an unknown target or option, a bad value, or an option of a target not asked for.
    """
    chosen = {name: get_target(name) for name in targets}
    values: dict[str, dict[str, Any]] = {name: {} for name in chosen}
    for key, value in _flat(options).items():
        name, _, option = key.replace("-", "_").partition(".")
        if not option:
            raise SfdaError(f"--target-set {key} names no target: write TARGET.OPTION=VALUE, e.g. "
                            "triton.instances=2")
        if name not in chosen:
            get_target(name)
            raise SfdaError(f"--target-set {key} sets an option of '{name}', which this export does not write: "
                            f"add --{name} or drop the option")
        values[name][option] = value
    return {name: build_options(target.options, values[name], f"the {name} target",
                                lambda o, n=name: f"--target-set {n}.{o}")
            for name, target in chosen.items()}


def check_targets(settings: ExportSettings) -> dict[str, Any]:
    """``settings.targets``' options (``target_options``), and each writer's own ``check(settings)`` of the
    export's flags, before anything is loaded or written."""
    chosen = target_options(tuple(settings.targets), dict(settings.target_options))
    if Path(str(settings.checkpoint)).suffix.lower() == ".onnx" and chosen:
        flags = " ".join(f"--{name}" for name in chosen)
        raise SfdaError(f"{flags} export(s) the serving graph from the checkpoint (the normalisation goes inside it): "
                        f"pass the .safetensors checkpoint instead of {settings.checkpoint}")
    for name in chosen:
        check = getattr(importlib.import_module(TARGETS[name].module), "check", None)
        if check is not None:
            check(settings)
    return chosen


def write_targets(job_args: dict[str, Any], chosen: dict[str, Any], report: dict) -> None:
    """Run each chosen target's writer; what it wrote lands in ``report["targets"][name]``."""
    for name, options in chosen.items():
        module = importlib.import_module(TARGETS[name].module)
        job = TargetJob(**job_args, files=report["files"], options=options)
        report.setdefault("targets", {})[name] = module.write(job)


@contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``path``, renamed onto it only when the block succeeds (a failed
    writer leaves nothing that looks complete; ``runs`` deletes such temporaries of interrupted runs)."""
    path = Path(path)
    if path.exists():
        raise SfdaError(f"{path} exists already: export into a new run (drop --name or pick another)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it 0o700
        os.replace(tmp, path)
    except OSError as e:
        raise SfdaError(f"cannot write {path} ({e.strerror or e}): free some disk space or write elsewhere "
                        "(SFDA_RUNS_DIR=/path)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_sample(name: str, dst: Path, replacements: Optional[dict[str, str]] = None) -> Path:
    """Copy the sample file ``samples/<name>`` of this package to ``dst``, ``@KEY@`` placeholders filled."""
    text = (Path(__file__).parent / "samples" / name).read_text()
    for key, value in (replacements or {}).items():
        text = text.replace(f"@{key}@", value)
    dst.write_text(text)
    return dst
