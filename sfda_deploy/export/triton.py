"""``export --triton``: a Triton Inference Server model repository in the export's run folder.

``triton/`` holds:
- ``<name>/config.pbtxt`` + ``<name>/1/model.onnx`` (backend ``onnxruntime``): the serving graph of
  ``raw_input`` (float 0–255 RGB ``images`` in, the normalisation inside; the export's ``--output``,
  ``logits`` or ``mask``, out), batch dynamic, height and width -1 for a ``--dynamic`` export;
  parity-gated against torch. ``--target-set triton.ort_tensorrt=true`` adds ONNX Runtime's TensorRT
  execution accelerator (GPU instances).
- ``<name>_trt/config.pbtxt`` + ``<name>_trt/1/model.plan`` (platform ``tensorrt_plan``) when the export
  built an engine: the engine file itself (a plain TensorRT plan), which takes the NORMALISED input of
  ``model.onnx``; its config's ``parameters`` say so (``sfda_input``, ``mean``, ``std``,
  ``channel_order``), and ``client.py`` normalises for it.
- ``client.py``: a tritonclient HTTP sample that segments one image and writes the mask PNG.

Every config sets ``max_batch_size``, ``dynamic_batching`` (when batching is possible),
``instance_group`` (KIND_GPU, KIND_CPU where this machine has no GPU, or as asked) and ``model_warmup``.
"""
from __future__ import annotations

import json
import re
import shutil
from typing import Optional

from sfda_deploy.errors import SfdaError
from sfda_deploy.export.export_settings import ExportSettings
from sfda_deploy.export.onnx import INPUT_NAME, OUTPUT_NAMES
from sfda_deploy.export.raw_input import check_raw_input, export_raw_input
from sfda_deploy.export.targets import TargetJob, copy_sample, staged_dir
from sfda_deploy.messages import say

DTYPES = {"logits": "TYPE_FP32", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8"}


def model_name(name: str) -> str:
    """A Triton model (and folder) name from a run name: letters, digits, ``_`` and ``-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not cleaned:
        raise SfdaError(f"'{name}' gives no usable Triton model name: pass --target-set triton.model_name=NAME")
    return cleaned


def instance_kind(asked: str, device: str) -> str:
    """``KIND_GPU`` / ``KIND_CPU``: as asked, or (``auto``) the GPU when this export ran on one or sees one."""
    if asked != "auto":
        return f"KIND_{asked.upper()}"
    import torch

    return "KIND_GPU" if str(device).startswith("cuda") or torch.cuda.is_available() else "KIND_CPU"


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor(name: str, dtype: str, dims) -> str:
    return f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    dims: {_dims(dims)}\n  }}"


def model_config(name: str, *, backend: Optional[str] = None, platform: Optional[str] = None, max_batch: int,
                 input_dims, output: str, output_dtype: str, output_dims, warmup_dims, kind: str, instances: int,
                 queue_delay_us: int, parameters: dict[str, str], accelerator: Optional[str] = None) -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``).

    Args:
        max_batch: ``max_batch_size``; 0 = the dims include the batch (no dynamic batching).
        input_dims, output_dims: without the batch when ``max_batch`` > 0; -1 for a free size.
        warmup_dims: the input dims the warm-up request uses (no -1).
        accelerator: ONNX Runtime's GPU execution accelerator ``tensorrt`` with this precision (FP32/FP16).
    """
    lines = [f'name: "{name}"', f'backend: "{backend}"' if backend else f'platform: "{platform}"',
             f"max_batch_size: {max_batch}",
             "input [\n" + _tensor(INPUT_NAME, "TYPE_FP32", input_dims) + "\n]",
             "output [\n" + _tensor(output, output_dtype, output_dims) + "\n]"]
    if max_batch > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    lines.append(f'model_warmup [\n  {{\n    name: "zeros"\n    batch_size: 1\n    inputs {{\n      key: "{INPUT_NAME}"\n'
                 f"      value {{\n        data_type: TYPE_FP32\n        dims: {_dims(warmup_dims)}\n"
                 "        zero_data: true\n      }\n    }\n  }\n]")
    if accelerator:
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                     '        name: "tensorrt"\n        parameters { key: "precision_mode" value: "'
                     f'{accelerator}" }}\n      }}\n    ]\n  }}\n}}')
    lines += [f'parameters {{\n  key: "{k}"\n  value {{ string_value: {json.dumps(v)} }}\n}}'
              for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def _parameters(meta, imgsz, sfda_input: str) -> dict[str, str]:
    """What a client needs beside the tensors: the input convention, the size, classes and colours."""
    return {"sfda_input": sfda_input, "imgsz": json.dumps(list(imgsz)), "mean": json.dumps(list(meta.mean)),
            "std": json.dumps(list(meta.std)), "channel_order": meta.channel_order,
            "classes": json.dumps(list(meta.classes.names)),
            "palette": json.dumps([list(c) for c in meta.classes.palette])}


def _output(settings: ExportSettings, num_classes: int, hw) -> tuple[str, str, list]:
    """(name, Triton dtype, dims without batch) of the export's output."""
    if settings.output == "mask":
        return OUTPUT_NAMES["mask"], DTYPES[settings.mask_dtype], list(hw)
    return OUTPUT_NAMES["logits"], DTYPES["logits"], [num_classes, *hw]


def onnx_model_config(job: TargetJob, name: str, kind: str) -> str:
    """The ``onnxruntime`` model of the serving graph (batch dynamic; H/W -1 when ``--dynamic``)."""
    settings, opts = job.settings, job.options
    hw = [-1, -1] if settings.dynamic else list(job.imgsz)
    out, dtype, out_dims = _output(settings, job.meta.num_classes, hw)
    accelerator = ("FP16" if settings.fp16 else "FP32") if opts.ort_tensorrt and kind == "KIND_GPU" else None
    return model_config(name, backend="onnxruntime", max_batch=opts.max_batch_size, input_dims=[3, *hw],
                        output=out, output_dtype=dtype, output_dims=out_dims, warmup_dims=[3, *job.imgsz], kind=kind,
                        instances=opts.instances, queue_delay_us=opts.max_queue_delay_us,
                        parameters=_parameters(job.meta, job.imgsz, "rgb_0_255"), accelerator=accelerator)


def plan_model_config(job: TargetJob, name: str) -> str:
    """The ``tensorrt_plan`` model of the export's engine: its profile decides the batch and the dims."""
    from sfda_deploy.export.tensorrt import profile_shapes

    settings = job.settings
    shapes = profile_shapes(job.imgsz, settings.batch, settings.dynamic, job.model.output_stride,
                            settings.max_batch, settings.max_imgsz)
    if settings.dynamic:  # batch 1..max: Triton batches; free H/W
        max_batch, hw = shapes["max"][0], [-1, -1]
        input_dims, warmup = [3, *hw], [3, *job.imgsz]
    else:  # a static engine's shape includes its batch: no batching by Triton
        max_batch, hw = 0, list(job.imgsz)
        input_dims, warmup = shapes["opt"], shapes["opt"]
    out, dtype, out_dims = _output(settings, job.meta.num_classes, hw)
    if max_batch == 0:
        out_dims = [settings.batch, *out_dims]
    return model_config(name, platform="tensorrt_plan", max_batch=max_batch, input_dims=input_dims, output=out,
                        output_dtype=dtype, output_dims=out_dims, warmup_dims=warmup, kind="KIND_GPU",
                        instances=job.options.instances, queue_delay_us=job.options.max_queue_delay_us,
                        parameters=_parameters(job.meta, job.imgsz, "normalized"))


def write(job: TargetJob) -> dict:
    """Write ``triton/`` into the run directory; returns what ``report.json`` records of it."""
    settings, opts = job.settings, job.options
    name = model_name(opts.model_name or job.run_dir.name)
    kind = instance_kind(opts.instance_kind, settings.device)
    folder = job.run_dir / "triton"
    models = [name]
    with staged_dir(folder) as tmp:
        version = tmp / name / "1"
        version.mkdir(parents=True)
        export_raw_input(job.model, job.meta, job.imgsz, settings.output, settings.dynamic, settings.opset,
                         version / "model.onnx", settings.mask_dtype, OUTPUT_NAMES[settings.output])
        parity = check_raw_input(version / "model.onnx", job.model, job.meta, job.images, settings.output,
                                 "Triton ONNX (0-255 input) vs torch")
        (tmp / name / "config.pbtxt").write_text(onnx_model_config(job, name, kind))
        engine = job.files.get("engine")
        if engine:
            plan_dir = tmp / f"{name}_trt" / "1"
            plan_dir.mkdir(parents=True)
            shutil.copyfile(engine, plan_dir / "model.plan")  # plain TensorRT plan (metadata: the sidecar only)
            (tmp / f"{name}_trt" / "config.pbtxt").write_text(plan_model_config(job, f"{name}_trt"))
            models.append(f"{name}_trt")
        copy_sample("triton_client.py", tmp / "client.py", {"MODEL_NAME": name})
    gpus = "--gpus all " if kind == "KIND_GPU" or engine else ""  # a CPU-only repository needs no GPU on the host
    say(f"Triton: {folder}/ (models {', '.join(models)}, {kind}; argmax agreement with torch "
        f"{parity['argmax_agreement']:.4f}%); serve it with: docker run {gpus}--rm -p 8000:8000 "
        f"-v {folder.resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
    return {"folder": str(folder), "models": models, "instance_kind": kind, "parity": parity}
