"""The collapse guard's references compared on the re-base's step files: which checkpoints each one calls collapsed.

    python -m scripts.collapse_refs docs/benchmark_steps docs/benchmark_steps_600 \
        [--dev-styles city2,suburb --held-out-styles autumn-rain,night-city] [--markdown] [--out refs.json]

Reads the method runs of ``scripts/rebase_benchmark.py``'s step directories with their style's AdaBN point
(``selection_grid.load_runs``). For each reference of ``selection.collapse.COLLAPSE_REFERENCES`` (``source``: the source
model's predicted-class shares; ``adabn``: AdaBN's; ``agree``: a class present only where both predict it) every
scored point is judged again from its recorded shares (``selection.records.recollapse``); a run whose step file lacks
the shares that takes (step files from before the shares were kept) is counted as not replayable. Per reference and
style:

* good lost: points that beat AdaBN by labels (their mIoU > AdaBN's) and are flagged collapsed;
* caught: flagged points whose mIoU is below the source's (a real collapse the guard stops);
* shipped: what the package's default rule with that reference ships (``SelectionSpec(collapse_ref=...)``,
  ``selection.records.replay``): median and worst regret (the best of the run's checkpoints by labels, AdaBN and
  the source, minus what ships) and runs shipped below the source / below AdaBN.

With ``--dev-styles`` / ``--held-out-styles`` the styles are reported in those two groups apart (the reference is
chosen on the first and judged on the second); styles in neither form a third group.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from scripts.selection_grid import load_runs, outcome
from sfda_deploy.adapt.selection.collapse import COLLAPSE_REFERENCES
from sfda_deploy.adapt.selection.records import recollapse, replayable
from sfda_deploy.adapt.selection.settings import SelectionSpec


def judge_run(run: dict, reference: str) -> dict:
    """One run's points judged against ``reference``: counts by hand-checkable definitions, and what ships."""
    sel, base = run["selection"], run["baseline"]
    if not replayable(sel, base, reference):
        return {"replayable": False, "points": len(sel["points"])}
    points = [p for p in recollapse(sel, base, reference) if p.get("miou") is not None]
    adabn, source = base["miou"], sel["reference"]["miou"]
    flagged = [p for p in points if p.get("collapse")]
    return {"replayable": True, "points": len(points), "good": sum(p["miou"] > adabn for p in points),
            "good_lost": sum(p["miou"] > adabn for p in flagged), "flagged": len(flagged),
            "caught": sum(p["miou"] < source for p in flagged),
            **outcome(run, SelectionSpec(collapse_ref=reference))}


def summarize(judged: list[dict]) -> dict:
    """Totals over runs (not replayable ones counted apart)."""
    ok = [j for j in judged if j["replayable"]]
    out = {"runs": len(ok), "not_replayable": len(judged) - len(ok),
           "points": sum(j["points"] for j in ok), "points_not_replayable": sum(j["points"] for j in judged
                                                                                  if not j["replayable"])}
    for k in ("good", "good_lost", "flagged", "caught", "below_source", "below_adabn"):
        out[k] = sum(int(j[k]) for j in ok)
    regrets = [j["regret"] for j in ok]
    out["median_regret"] = statistics.median(regrets) if regrets else None
    out["worst_regret"] = max(regrets) if regrets else None
    out["worst_run"] = max(ok, key=lambda j: j["regret"])["run"] if ok else None
    return out


def group_of(style: str, dev: list[str], held_out: list[str]) -> str:
    if not dev and not held_out:
        return "all styles"
    return "dev" if style in dev else "held out" if style in held_out else "other"


def compare(runs: list[dict], dev: list[str], held_out: list[str]) -> dict:
    """``{group: {reference: {"styles": {style: summary}, "all": summary}}}``."""
    result: dict = {}
    for run in runs:
        result.setdefault(group_of(run["style"], dev, held_out), {})
    for group in result:
        part = [r for r in runs if group_of(r["style"], dev, held_out) == group]
        for reference in COLLAPSE_REFERENCES:
            judged = [(r["style"], judge_run(r, reference)) for r in part]
            styles = sorted({s for s, _ in judged})
            result[group][reference] = {"styles": {s: summarize([j for t, j in judged if t == s]) for s in styles},
                                        "all": summarize([j for _, j in judged])}
    return result


def _cells(m: dict) -> list[str]:
    if not m["runs"]:
        return [f"0 of {m['not_replayable']}"] + ["–"] * 6
    runs = f"{m['runs']}" + (f" (+{m['not_replayable']} not replayable)" if m["not_replayable"] else "")
    return [runs, f"{m['good_lost']} of {m['good']}", f"{m['caught']} of {m['flagged']}",
            f"{m['median_regret']:.2f}", f"{m['worst_regret']:.2f} ({m['worst_run']})", str(m["below_source"]),
            str(m["below_adabn"])]


HEADER = ["group", "reference", "style", "runs", "good lost", "caught (of flagged)", "median regret", "worst regret",
          "< source", "< AdaBN"]


def rows(result: dict) -> list[list[str]]:
    out = []
    for group, by_ref in result.items():
        for reference, m in by_ref.items():
            out += [[group, reference, style, *_cells(s)] for style, s in m["styles"].items()]
            out.append([group, reference, "**all**", *_cells(m["all"])])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("state", nargs="+", type=Path, help="re-base step directories")
    p.add_argument("--dev-styles", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="styles the reference is chosen on (comma-separated)")
    p.add_argument("--held-out-styles", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="styles it is judged on, reported apart")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    runs = load_runs(args.state)
    result = compare(runs, args.dev_styles, args.held_out_styles)
    table = rows(result)
    print(f"{len(runs)} method runs with an AdaBN point on their sample")
    for reference in COLLAPSE_REFERENCES:
        parts = [m[reference]["all"] for m in result.values()]
        runs_ok, points_ok = sum(m["runs"] for m in parts), sum(m["points"] for m in parts)
        points = points_ok + sum(m["points_not_replayable"] for m in parts)
        print(f"{reference}: {runs_ok} of {len(runs)} runs ({points_ok} of {points} scored points) replayable")
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |\n|" + "---|" * 3 + "---:|" * (len(HEADER) - 3))
        print("\n".join("| " + " | ".join(r) + " |" for r in table))
    else:
        widths = [max(len(r[i]) for r in [HEADER] + table) for i in range(len(HEADER))]
        for r in [HEADER] + table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.out:
        from sfda_deploy.runs import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
