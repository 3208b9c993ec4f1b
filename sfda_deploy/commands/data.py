"""``sfda-deploy generate-data``: the synthetic benchmark (``data.synthetic``) or, with ``--drive``, a labelled
drive (``data.synth_drive``)."""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.config import GenerateDataConfig
from sfda_deploy.data.synthetic import check_request, generate, parse_styles
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.runs import new_run_dir


def run_generate_data(cfg: GenerateDataConfig) -> Path:
    """``sfda-deploy generate-data``: validate the flags, generate, say where it went (the drive with ``--drive``)."""
    if cfg.drive:
        return _generate_drive(cfg)
    styles = parse_styles(cfg.styles)
    splits, size = check_request({"train": cfg.train, "val": cfg.val}, cfg.size)
    root = Path(cfg.out) if cfg.out else new_run_dir("generate-data", cfg.name)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SfdaError(f"cannot create {root} ({e.strerror}): choose a writable --out") from None
    try:
        generate(root, styles, splits, size, cfg.seed)
    except OSError as e:
        raise SfdaError(f"cannot write under {root} ({e.strerror}): choose a writable --out") from None
    say(f"wrote {', '.join(styles)} ({splits['train']} train + {splits['val']} val, {size[0]}x{size[1]}) "
        f"under {root}")
    for s in styles:
        say(f"  --target cityscapes --data-root {root / s}")
    return root


def _generate_drive(cfg: GenerateDataConfig) -> Path:
    """``generate-data --drive OUT``: validate the drive's flags, render it, say where it went."""
    from sfda_deploy.data.synth_drive import DrivePlan, check_plan, generate_drive, parse_conditions

    plan = check_plan(DrivePlan(parse_conditions(cfg.conditions), cfg.rounds, cfg.condition_frames,
                                cfg.scene_frames, tuple(cfg.size), cfg.seed))
    out = generate_drive(cfg.drive, plan)
    say(f"wrote a {plan.frames}-frame drive ({' → '.join(plan.conditions)} × {plural(plan.rounds, 'round')}, "
        f"{plan.size[0]}x{plan.size[1]}) to {out}")
    say(f"  sfda-deploy segment {out / 'drive.mp4'} --labels {out / 'labels'} --adapt anchored")
    return out
