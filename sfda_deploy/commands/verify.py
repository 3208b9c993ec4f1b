"""``sfda-deploy verify MODEL_A MODEL_B``: the fidelity of B against A (``export.verify``) on the same frames,
in ``runs/verify/<name>/report.json``."""
from __future__ import annotations

from sfda_deploy.config import VerifyConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.data.frames import folders_used, read_frames, stack, synthetic_frames
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.verify import at_size, compare_runners, format_fidelity, open_runner
from sfda_deploy.messages import plural, say
from sfda_deploy.runs import new_run_dir, write_json
from sfda_deploy.runtime.timing import busy_warning


def run_verify(cfg: VerifyConfig) -> dict:
    """``sfda-deploy verify MODEL_A MODEL_B --data DIR``: fidelity report of B against A."""
    if not cfg.model_a or not cfg.model_b:
        raise SfdaError("verify needs two models: sfda-deploy verify MODEL_A MODEL_B --data DIR")
    a, b = open_runner(cfg.model_a, cfg.device), open_runner(cfg.model_b, cfg.device)
    if a.imgsz and b.imgsz and a.imgsz != b.imgsz:
        raise SfdaError(f"{a.path} runs at {a.imgsz} but {b.path} at {b.imgsz}: compare files exported "
                        "at the same --imgsz")
    imgsz = a.imgsz or b.imgsz or tuple(a.meta.input_size)
    a, b = at_size(a, imgsz, cfg.device), at_size(b, imgsz, cfg.device)
    if cfg.data:
        frames = read_frames(cfg.data, imgsz, cfg.max_images, a.meta.classes, what="--data")
        folders = folders_used(cfg.data, cfg.max_images)
        on = f"{plural(len(frames), 'image')} of {cfg.data}" + (f" ({', '.join(folders)})" if folders else "")
    else:
        frames = synthetic_frames(imgsz, min(cfg.max_images, 4))
        on = (f"{plural(len(frames), 'generated frame')} (no --data given: agreement only, no mIoU; pass "
              "--data DIR for your images)")
    images, labels = stack(frames)
    on += " (with labels: mIoU on these only)" if labels is not None else ""
    result = compare_runners(a, b, images, labels)
    result.update(model_a=str(a.path), model_b=str(b.path), imgsz=list(imgsz), images=len(frames),
                  data=cfg.data or "generated")
    run_dir = new_run_dir("verify", cfg.name)
    save_config(run_dir, cfg)
    write_json(run_dir / "report.json", result)
    say(format_fidelity(f"A {a.path.name} vs B {b.path.name}", result, on))
    say(f"latency (median of {plural(len(a.per_image), 'call')} each, in turn): {a.path.name} "
        f"{result['latency_ms_a']:.2f} ms/image (spread {100 * result['spread_a']:.0f}%), {b.path.name} "
        f"{result['latency_ms_b']:.2f} ms/image (spread {100 * result['spread_b']:.0f}%)  "
        f"(report: {run_dir / 'report.json'})")
    warning = busy_warning([result["spread_a"], result["spread_b"]])
    if warning:
        say(f"warning: {warning}")
    return result
