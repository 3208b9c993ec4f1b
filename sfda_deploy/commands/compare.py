"""``sfda-deploy compare``: several methods, same data / model / budget / seed, one report.

Every compare also runs AdaBN (``methods/adabn.py``, no budget: one pass over the target images), the
training-free baseline: a method's value is its gain over it, a column of every table.

Layout of a compare run ``runs/compare/<name>/``::

    config.yaml            the compare settings (``--resume DIR`` reuses them)
    methods/<method>/      an ordinary ``adapt`` run directory per method (model, metrics, plots)
    timing.json            wall seconds per method, summed over sessions
    results.json           the table below as data (``compare_results`` returns it)
    report.md, compare.png mIoU / gain over AdaBN / gap closed / wall time / it/s per method, per-class IoU

Resumable per method: a method whose sub-run finished (``model.safetensors`` + ``metrics.json``)
is not run again; one with a ``last.pt`` continues from it (``adapt --resume``); the others start.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

from sfda_deploy.adapt.plots import plot_compare
from sfda_deploy.adapt.shipped import is_fallback, shipped_label
from sfda_deploy.config import AdaptConfig, CompareConfig
from sfda_deploy.config_build import read_run_config, resumed_values, save_config
from sfda_deploy.config_values import check_values
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, require_options, say
from sfda_deploy.runs import new_run_dir, start_run, write_json, write_text, written_by_another_process

BASELINE = "adabn"
# compare's iters was the total per method before --budget took that meaning (it is per stage now, as adapt's).
OLD_ITERS_NOTE = ("note: {where} sets iters: {iters}, which compare reads PER STAGE (as adapt does); before "
                  "--budget it was the total per method: write budget: {iters} for that")


def parse_methods(text: str) -> list[str]:
    """Comma-separated names, validated (unknown → closest suggestion), duplicates removed."""
    from sfda_deploy.adapt.methods import get_method

    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise SfdaError("--methods is empty: pass e.g. --methods ldbe,prsfda")
    for n in names:
        get_method(n)
    return names


def compared_methods(text: str) -> list[str]:
    """``parse_methods`` with the AdaBN baseline first, whether listed or not."""
    return [BASELINE] + [n for n in parse_methods(text) if n != BASELINE]


def stage_iters(total: Optional[int], stages: int, method: str) -> Optional[int]:
    """Iterations per stage that give a method of ``stages`` stages ``total`` iterations in all (⌊total /
    stages⌋ each: every method gets the same budget, ATP's three stages included); None keeps the
    method's own default."""
    if total is None:
        return None
    if total < stages:
        raise SfdaError(f"--budget {total} is fewer than {method}'s {plural(stages, 'stage')}: give at least {stages}")
    return total // stages


def check_budget(cfg: CompareConfig) -> None:
    """--iters (per stage) or --budget (in all per method), not both."""
    if cfg.iters is not None and cfg.budget is not None:
        raise SfdaError(f"--iters {cfg.iters} (per stage) and --budget {cfg.budget} (in all per method) both given: "
                        "keep one")


def _adapt_config(cfg: CompareConfig, method: str) -> AdaptConfig:
    from sfda_deploy.adapt.methods import get_method

    recipe = get_method(method)
    if not recipe.trains:  # AdaBN: no budget, no crop, no batch
        budget = dict(iters=None, batch=None, crop=None)
    else:
        per_stage = cfg.iters if cfg.iters is not None else stage_iters(cfg.budget, len(recipe.stages), method)
        budget = dict(iters=per_stage, batch=cfg.batch, crop=cfg.crop)
    return AdaptConfig(target=cfg.target, data_root=cfg.data_root, source=cfg.source, method=method,
                       eval_split=cfg.eval_split, amp=cfg.amp, device=cfg.device, workers=cfg.workers,
                       seed=cfg.seed, name=method, **cfg.selection_values(), **budget)


def _finished(sub: Path) -> bool:
    return (sub / "model.safetensors").is_file() and (sub / "metrics.json").is_file()


def _load_settings(cfg: CompareConfig) -> tuple[CompareConfig, Path]:
    """A new compare directory, or the one being resumed with its saved settings (``config_build.resumed_values``
    has refused differing options already when the config came from the command line)."""
    if not cfg.resume:
        return cfg, new_run_dir("compare", cfg.name)
    root = Path(cfg.resume)
    values = resumed_values(CompareConfig, str(root), {"resume": str(root), "workers": cfg.workers,
                                                       "device": cfg.device})
    saved = read_run_config(CompareConfig, root)
    if "budget" not in saved and values.get("iters") is not None:  # a run from before --budget: iters was the total
        say(f"note: {root} was started when compare's iters was the total per method: resumed as --budget "
            f"{values['iters']}")
        values["budget"], values["iters"] = values["iters"], None
    if written_by_another_process(root):
        raise SfdaError(f"{root} is being written by another process: wait for it to end before resuming")
    start_run(root)
    return dataclasses.replace(cfg, **check_values(CompareConfig, values)), root  # typed like flags and YAML


def method_result(sub: Path) -> dict:
    """One finished sub-run's figures from its ``metrics.json``: the shipped model's mIoU (selected without
    labels, or on fallback the AdaBN baseline or the source: ``adapt.shipped``) and the last iterate's."""
    if not (sub / "metrics.json").is_file():
        raise SfdaError(f"{sub} did not finish (no metrics.json): continue with sfda-deploy compare --resume")
    metrics = json.loads((sub / "metrics.json").read_text())
    stages = [k for k in metrics if k not in ("before", "selection")]
    if not stages or "eval" not in metrics[stages[-1]]:
        raise SfdaError(f"{sub} has no evaluation: compare needs a labelled --eval-split of the target")
    last = metrics[stages[-1]]["eval"]
    selection = metrics.get("selection") or {}
    shipped = (selection.get("shipped") or {}).get("eval") or last
    iters = sum(metrics[s]["iters"] for s in stages)
    seconds = sum(metrics[s].get("seconds_this_session") or 0.0 for s in stages)
    return {"miou": shipped["miou"], "iou": shipped["iou"], "last_miou": last["miou"],
            "selected": shipped_label(selection), "fallback": is_fallback(selection),
            "reason": selection.get("reason"), "iters": iters,
            "it_per_s": round(iters / seconds, 3) if seconds > 0 and iters > 0 else None,
            "before": metrics.get("before")}


def gap_closed(miou: float, source: float, oracle: Optional[float]) -> Optional[float]:
    """``100·(m − source)/(oracle − source)`` (None without an oracle above the source)."""
    if oracle is None or oracle <= source:
        return None
    return round(100.0 * (miou - source) / (oracle - source), 1)


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def gain_over(miou: float, baseline: Optional[float]) -> Optional[float]:
    """``miou − baseline`` in mIoU points, rounded to 0.01 (None without a baseline)."""
    return None if baseline is None else round(miou - baseline, 2)


def budget_words(cfg: CompareConfig) -> str:
    """The training budget of every method, in words."""
    if cfg.budget is not None:
        return f"{cfg.budget} iterations per method in all (split evenly over its stages; AdaBN: none)"
    if cfg.iters is not None:
        return f"{cfg.iters} iterations per stage (AdaBN: none)"
    return "each method's default iterations (AdaBN: none)"


def summary_lines(cfg: CompareConfig, rows: dict, source: Optional[dict]) -> list[str]:
    """The summary table (Markdown): one row per method, its shipped model's figures."""
    src = source["miou"] if source else None
    base = rows[BASELINE]["miou"] if BASELINE in rows else None
    lines = ["| method | mIoU (shipped) | shipped | last-iterate mIoU | Δ vs source | gain over AdaBN | gap closed % "
             "| iterations | wall s | it/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if source:
        lines.append(f"| source-only | {src:.2f} | - | - | 0.00 | {_fmt(gain_over(src, base), '+.2f')} | "
                     f"{_fmt(gap_closed(src, src, cfg.oracle_miou), '.1f')} | 0 | - | - |")
    for name, r in rows.items():
        delta = None if src is None else r["miou"] - src
        gap = gap_closed(r["miou"], src, cfg.oracle_miou) if src is not None else None
        lines.append(f"| {name} | {r['miou']:.2f} | {r.get('selected', 'last')} | {_fmt(r.get('last_miou'))} | "
                     f"{_fmt(delta, '+.2f')} | {_fmt(gain_over(r['miou'], base), '+.2f')} | {_fmt(gap, '.1f')} | "
                     f"{r['iters']} | {_fmt(r.get('wall_s'), '.1f')} | {_fmt(r['it_per_s'], '.2f')} |")
    return lines


SHIPPED_WORDS = ("Shipped: the checkpoint each run selected without labels (criterion {criterion}), as `stage/"
                 "iteration`; `(top rejected)`: the top-ranked checkpoint collapsed or fell below the AdaBN floor, "
                 "and the next one shipped. `AdaBN (fallback)` / `source (fallback)`: none of the run's own "
                 "checkpoints beat that model, which shipped instead, so the row's mIoU is that model's (the "
                 "last-iterate column shows what the training reached).")


def render_report(cfg: CompareConfig, rows: dict, source: Optional[dict]) -> str:
    """The Markdown report: summary table then per-class IoU (rows: method → result + wall_s)."""
    lines = [f"# Compare: {cfg.target} ({cfg.data_root})", "",
             f"Source `{cfg.source}`, seed {cfg.seed}, {budget_words(cfg)}, batch {cfg.batch or 'method default'}, "
             f"crop {cfg.crop or 'method default'}, device {cfg.device}.", "",
             *summary_lines(cfg, rows, source),
             "", SHIPPED_WORDS.format(criterion=cfg.select_by) + " Δ, gain and gap closed are of the shipped model.",
             "", "Gain over AdaBN = mIoU − AdaBN's mIoU (BatchNorm statistics re-estimated on the target, "
             "no training): what the method adds over the training-free baseline."]
    if cfg.oracle_miou is not None:
        lines += ["", f"Gap closed = (mIoU − source) / (oracle {cfg.oracle_miou:.2f} − source)."]
    classes = list(next(iter(rows.values()))["iou"]) if rows else []
    cols = (["source-only"] if source else []) + list(rows)
    lines += ["", "## Per-class IoU", "", "| class | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]
    for c in classes:
        vals = ([source["iou"].get(c)] if source else []) + [rows[m]["iou"].get(c) for m in rows]
        lines.append(f"| {c} | " + " | ".join(_fmt(v) for v in vals) + " |")
    lines += ["", "![mIoU per method and per class](compare.png)", ""]
    return "\n".join(lines)


def _results(cfg: CompareConfig, root: Path, names: list[str], timing: dict) -> dict:
    """``results.json``: source-only, the budget, and per method its figures, gain over AdaBN, gap closed."""
    rows = {n: {**method_result(root / "methods" / n), "wall_s": timing.get(n)} for n in names}
    source = next((r["before"] for r in rows.values() if r.get("before")), None)
    base = rows[BASELINE]["miou"]
    results = {"source_only": None if source is None else {"miou": source["miou"], "iou": source["iou"]},
               "oracle_miou": cfg.oracle_miou, "baseline": BASELINE,
               "budget": {"iters_per_method": cfg.budget, "iters_per_stage": cfg.iters, "batch": cfg.batch,
                          "crop": list(cfg.crop) if cfg.crop else None, "seed": cfg.seed},
               "methods": {n: {k: v for k, v in r.items() if k != "before"} for n, r in rows.items()}}
    for r in results["methods"].values():
        r["gain_over_adabn"] = gain_over(r["miou"], base)
        r["gap_closed"] = gap_closed(r["miou"], source["miou"], cfg.oracle_miou) if source else None
    return results


def compare_results(cfg: CompareConfig) -> dict:
    """``run_compare`` for scripts: its ``results.json`` as a dict, plus ``run_dir``.

    Returns:
        ``{"run_dir", "source_only": {miou, iou} | None, "oracle_miou", "baseline": "adabn",
        "budget": {iters_per_method (--budget), iters_per_stage (--iters), batch, crop, seed},
        "methods": {name: {miou, iou (class → IoU %),
        iters (all stages), wall_s, it_per_s, gain_over_adabn, gap_closed}}}``, AdaBN first.
    """
    root = run_compare(cfg)
    return {"run_dir": str(root), **json.loads((root / "results.json").read_text())}


def run_compare(cfg: CompareConfig) -> Path:
    """Run AdaBN and each method of ``cfg.methods`` as sub-runs, then write the report; returns the directory."""
    from sfda_deploy.adapt.selection.settings import spec_of
    from sfda_deploy.commands.adapt import run_adapt

    if not cfg.resume:  # validate before creating the run directory
        check_budget(cfg)
        parse_methods(cfg.methods)
        spec_of(cfg)
        require_options("compare", {"--source": cfg.source, "--data-root": cfg.data_root},
                        f"sfda-deploy compare --target {cfg.target} --data-root DATA --source CKPT --methods atp,ldbe")
    cfg, root = _load_settings(cfg)
    names = compared_methods(cfg.methods)
    if not cfg.resume:
        save_config(root, cfg, exclude=("resume",))
    timing_path = root / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    for name in names:
        sub = root / "methods" / name
        if _finished(sub):
            say(f"{name}: finished earlier, kept")
            continue
        acfg = _adapt_config(cfg, name)
        t0 = time.perf_counter()
        if (sub / "last.pt").is_file():
            run_adapt(dataclasses.replace(acfg, resume=str(sub)))
        else:
            if not sub.is_dir():
                sub = new_run_dir("methods", name, root=root)
            run_adapt(acfg, run_dir=sub)
        timing[name] = round(timing.get(name, 0.0) + time.perf_counter() - t0, 2)
        write_json(timing_path, timing)
    results = _results(cfg, root, names, timing)
    write_json(root / "results.json", results)
    write_text(root / "report.md", render_report(cfg, results["methods"], results["source_only"]))
    plot_compare(root / "compare.png", results["methods"], results["source_only"],
                 f"{cfg.target} {cfg.data_root}: shipped model per method ({budget_words(cfg)})")
    say("\n".join(["", *summary_lines(cfg, results["methods"], results["source_only"]), "",
                    SHIPPED_WORDS.format(criterion=cfg.select_by), ""]))
    say(f"wrote {root / 'report.md'} and {root / 'compare.png'}")
    return root
