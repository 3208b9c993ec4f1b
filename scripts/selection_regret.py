"""How well each label-free criterion picks checkpoints: rank correlation with mIoU and selection regret.

    python -m scripts.selection_regret runs/compare/bench-* runs/adapt/atp-fog --out regret.json

Reads every ``metrics.json`` under the given run directories (adapt runs, or compare runs with their
``methods/<method>/`` sub-runs) whose ``selection`` record has the mIoU at its scoring points (a labelled
``--eval-split``). Each run is keyed by (style, method, budget) from its ``config.yaml``: the style is the
``--data-root`` folder's name, the method gets ``+P`` with ``--propagate``, the budget is the iterations
the run's stages ran in all.

Per run and criterion (all criteria are recorded at the same points of one run):

* ``spearman``: rank correlation of the criterion with mIoU over the scored checkpoints (None with fewer
  than 3 points or a constant series);
* ``regret``: best mIoU among the checkpoints (by labels) − mIoU of the checkpoint the criterion scores
  highest (the earliest on ties);
* ``shipped_regret``: best mIoU among the checkpoints and the source − mIoU of what the run would ship with
  that criterion, fallback included (``selection.rule.decide`` with the run's margin and collapse flags).

Each criterion is also paired with each other one as the fallback's judge (``snd|im``: SND picks the
checkpoint, the fallback compares it with the source on IM; ``--select-by snd --fallback-by im``).

Then per rule: median and worst regret, median and worst shipped regret, mean Spearman. The default rule
should be the one with the lowest worst-case regret of what ships.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Optional, Sequence

import yaml

from sfda_deploy.adapt.selection.records import adabn_candidate, matching_baseline, read_selection, replay, shipped_name
from sfda_deploy.adapt.selection.rule import best_point
from sfda_deploy.adapt.selection.settings import SelectionSpec


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's ρ (Pearson correlation of the ranks); None for fewer than 3 pairs or a constant series."""
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / (sxx * syy) ** 0.5


def criterion_row(selection: dict, criterion: str, guard: Optional[str] = None, baseline: Optional[dict] = None,
                  spec: Optional[SelectionSpec] = None) -> dict:
    """Spearman, regret and shipped regret of one criterion in one run's ``selection`` record (``guard``:
    the criterion its fallback compares the source on, ``--fallback-by``; None: the criterion; ``spec``: a
    whole rule instead, AdaBN baseline and floor included). ``baseline``: the run's AdaBN point (or None):
    the shipped regret counts it among what could have shipped, under every rule."""
    points = [p for p in selection["points"] if p.get("miou") is not None]
    best = max(p["miou"] for p in points)
    pick = best_point(points, criterion, skip_collapsed=False)
    reference = selection.get("reference")
    row = {"spearman": spearman([p["scores"][criterion] for p in points], [p["miou"] for p in points]),
           "regret": round(best - pick["miou"], 4), "picked": f"{pick['stage']}/{pick['iter']}"}
    if reference is not None and reference.get("miou") is not None:
        spec = spec or SelectionSpec(select_by=criterion, fallback_by=guard, baseline="source", floor_by=())
        shipped = replay(selection, spec, baseline)["shipped"]
        ceiling = max([best, reference["miou"]] + ([baseline["miou"]] if baseline and baseline.get("miou") else []))
        row["shipped_regret"] = round(ceiling - shipped["miou"], 4)
        row["shipped_miou"] = shipped["miou"]
        row["ships"] = shipped_name(shipped, reference, baseline)
    return row


def run_key(run: Path, metrics: dict) -> tuple[str, str, str]:
    """(style, method, budget) of an adapt run directory: style and method from its ``config.yaml``, the
    budget = the iterations its stages ran in all (``metrics.json``)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    style = Path(str(cfg.get("data_root") or run.name)).name
    method = str(cfg.get("method") or run.name) + ("+P" if cfg.get("propagate") else "")
    budget = sum(v["iters"] for v in metrics.values() if isinstance(v, dict) and "iters" in v)
    return style, method, str(budget)


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories under ``paths`` whose metrics.json holds a selection with mIoU at its points."""
    found = []
    for root in paths:
        for metrics in sorted(Path(root).rglob("metrics.json")):
            sel = json.loads(metrics.read_text()).get("selection")
            if sel and any(p.get("miou") is not None for p in sel.get("points", [])):
                found.append(metrics.parent)
    return found


def summarise(rows: list[dict], criteria: Sequence[str]) -> dict:
    """Per criterion (over the runs that have it): median / worst regret, median / worst shipped regret,
    mean Spearman, and how many runs it ships below the source and below AdaBN."""
    out = {}
    for c in criteria:
        have = [r for r in rows if c in r["criteria"]]
        regrets = [r["criteria"][c]["regret"] for r in have]
        shipped = [r["criteria"][c]["shipped_regret"] for r in have if "shipped_regret" in r["criteria"][c]]
        rhos = [r["criteria"][c]["spearman"] for r in have if r["criteria"][c]["spearman"] is not None]
        below = [r for r in have if r["criteria"][c].get("shipped_miou") is not None]
        out[c] = {"runs": len(regrets), "median_regret": statistics.median(regrets), "worst_regret": max(regrets),
                  "median_shipped_regret": statistics.median(shipped) if shipped else None,
                  "worst_shipped_regret": max(shipped) if shipped else None,
                  "mean_spearman": round(sum(rhos) / len(rhos), 4) if rhos else None,
                  "below_source": sum(r["criteria"][c]["shipped_miou"] < r["source_miou"] for r in below),
                  "below_adabn": sum(r["criteria"][c]["shipped_miou"] < r["adabn_miou"] for r in below
                                     if r.get("adabn_miou") is not None)}
    return out


DEFAULT = "default"


def rules(selection: dict, baseline: Optional[dict] = None) -> dict:
    """Every (criterion, fallback criterion) pair's row, judged against the source: ``"snd"`` picks and falls
    back by SND, ``"snd|im"`` picks by SND and falls back by IM; where the run has an AdaBN point, also
    ``"im|im+adabn"`` (AdaBN is the fallback, no floor) and ``"default"`` (the package's rule:
    ``SelectionSpec()``)."""
    out = {}
    for c in selection["criteria"]:
        for g in selection["criteria"]:
            out[c if g == c else f"{c}|{g}"] = criterion_row(selection, c, None if g == c else g, baseline)
    if baseline is not None:
        spec = SelectionSpec()
        out["im|im+adabn"] = criterion_row(selection, "im", "im", baseline,
                                           SelectionSpec(select_by="im", fallback_by="im", baseline="adabn", floor_by=()))
        out[DEFAULT] = criterion_row(selection, spec.select_by, spec.fallback_by, baseline, spec)
    return out


def measure(runs: Sequence[Path]) -> dict:
    """The per-run rows and the per-criterion summary of ``runs``."""
    loaded = []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["selection"] = read_selection(metrics.get("selection"))
        loaded.append((run, metrics, run_key(run, metrics)))
    adabn = {key[0]: adabn_candidate(m["selection"]) for _, m, key in loaded if key[1] == "adabn"}
    rows = []
    for run, metrics, (style, method, budget) in loaded:
        if method == "adabn":
            continue
        sel = metrics["selection"]
        baseline = matching_baseline(sel, adabn.get(style))
        rows.append({"style": style, "method": method, "budget": budget, "run": str(run),
                     "source_miou": (sel.get("reference") or {}).get("miou"),
                     "adabn_miou": None if baseline is None else baseline.get("miou"),
                     "criteria": rules(sel, baseline)})
    criteria = sorted({c for r in rows for c in r["criteria"]})
    common = [r for r in rows if set(criteria) <= set(r["criteria"])]  # every rule judged on the same runs
    summary = summarise(common, criteria) if common else {}
    plain = [c for c in summary if "|" not in c]
    ranked = sorted(plain, key=lambda c: (summary[c]["worst_regret"], summary[c]["median_regret"]))
    shipped = sorted((c for c in summary if summary[c]["worst_shipped_regret"] is not None),
                     key=lambda c: (summary[c]["worst_shipped_regret"], summary[c]["median_shipped_regret"],
                                    summary[c]["worst_regret"], summary[c]["median_regret"]))
    return {"rows": rows, "summary": summary, "summary_runs": len(common),
            "left_out": [r["run"] for r in rows if r not in common],
            "lowest_worst_regret": ranked[0] if ranked else None,
            "lowest_worst_shipped_regret": shipped[0] if shipped else None}


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def render(result: dict) -> str:
    """Plain-text table: one line per run and criterion, then the summary."""
    lines = [f"{'style':<14}{'method':<12}{'budget':<9}{'rule':<14}{'spearman':>9}{'regret':>8}{'shipped':>9}"]
    for r in result["rows"]:
        for c, v in r["criteria"].items():
            lines.append(f"{r['style']:<14}{r['method']:<12}{r['budget']:<9}{c:<14}{_fmt(v['spearman']):>9}"
                         f"{_fmt(v['regret']):>8}{_fmt(v.get('shipped_regret')):>9}")
    lines += ["", f"summary over the {result['summary_runs']} runs every rule applies to "
                  f"({len(result['left_out'])} left out: no AdaBN point scored on their sample)",
              f"{'rule':<14}{'runs':>5}{'median':>8}{'worst':>8}{'shipped med':>12}{'worst':>8}{'ρ mean':>8}"
              f"{'<source':>8}{'<adabn':>8}"]
    for c, s in result["summary"].items():
        lines.append(f"{c:<14}{s['runs']:>5}{_fmt(s['median_regret']):>8}{_fmt(s['worst_regret']):>8}"
                     f"{_fmt(s['median_shipped_regret']):>12}{_fmt(s['worst_shipped_regret']):>8}"
                     f"{_fmt(s['mean_spearman']):>8}{s['below_source']:>8}{s['below_adabn']:>8}")
    lines.append(f"lowest worst-case regret: {result['lowest_worst_regret']}; lowest worst-case regret of what "
                 f"ships (fallback included): {result['lowest_worst_shipped_regret']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="adapt or compare run directories (searched recursively)")
    p.add_argument("--out", type=Path, help="write the rows and summary as JSON here")
    args = p.parse_args(argv)
    runs = find_runs(args.runs)
    if not runs:
        raise SystemExit("no run with a selection record and mIoU at its points under the given paths: run adapt or "
                         "compare with a labelled --eval-split")
    result = measure(runs)
    print(render(result))
    if args.out:
        from sfda_deploy.runs import write_json

        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
