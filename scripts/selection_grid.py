"""The grid the selection default was chosen from, with a leave-one-style-out check of that choice.

    python -m scripts.selection_grid docs/benchmark_steps docs/benchmark_steps_900 \
        [--holdout-device cpu] [--holdout-state docs/benchmark_steps_600] [--family ranking]

Reads the re-base's step files (``scripts/rebase_benchmark.py``: each method run keeps its ``selection``
record, and each style's ``adabn`` step gives the AdaBN point the rules compare with; seed-noise steps are
left out, their sample differs). Every rule is ``SelectionSpec`` with criterion IM and fallback judge IM,
varied in the baseline (source, or AdaBN) and the floor (none, SND, mix, both; tolerance 0 to 8 %); with
``--family ranking`` (issue 26) varied instead in the ranking criterion (a recorded score or a composite,
``selection.criteria``), the fallback's judge, what the fallback ships (``fallback_to``) and three floors. Each is
re-applied with ``selection.records.replay``. Shipped regret = the best of (checkpoints by labels, source, AdaBN) −
what the rule ships.

Printed: per rule the median / worst / mean shipped regret and how many runs it ships below the source and
below AdaBN (and below it by more than ``SEED_NOISE``); the rule with the lowest worst-case regret (ties: median,
then mean); and leave-one-style-out: for each style, the rule picked on the other styles, judged on this one.
"""
from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path
from typing import Optional

from sfda_deploy.adapt.selection.records import adabn_candidate, matching_baseline, read_selection, replay, shipped_name
from sfda_deploy.adapt.selection.settings import SelectionSpec

FLOORS = ((), ("snd",), ("mix",), ("snd", "mix"))
TOLERANCES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
RANKERS = ("im", "snd", "mix", "im+snd", "im+mix", "im+snd+mix")
JUDGES = (None, "im", "mix", "im+mix")  # None: the ranker judges
HOMES = ("better", "adabn")
RANKING_FLOORS = (((), False), (("snd",), False), (("snd",), True))  # at 3 %; sticky or not
SEED_NOISE = 0.8  # mIoU: seed-to-seed spread of a method on v2 (docs/benchmark.md)


def grid(criteria=("im",)) -> list[SelectionSpec]:
    """The rules tried, for each ranking criterion (it also judges the fallback): the source baseline, AdaBN
    without a floor, AdaBN with each floor and tolerance judged per checkpoint, and (SND floors) sticky: once a
    checkpoint breaks the floor no later one is a candidate. The fallback is the better of AdaBN and the source
    (issue 14's family, as it was chosen)."""
    out = []
    for c in criteria:
        rule = partial(SelectionSpec, select_by=c, fallback_by=c, fallback_to="better")
        out += [rule(baseline="source", floor_by=()), rule(baseline="adabn", floor_by=())]
        out += [rule(baseline="adabn", floor_by=f, floor_tolerance=t, floor_sticky=False)
                for f in FLOORS[1:] for t in TOLERANCES]
        out += [rule(baseline="adabn", floor_by=f, floor_tolerance=t, floor_sticky=True)
                for f in (("snd",), ("snd", "mix")) for t in TOLERANCES]
    return out


def ranking_grid() -> list[SelectionSpec]:
    """Issue 26's family: each ranker × judge (the ranker itself, IM, mix, IM+mix; a judge equal to the ranker
    once) × fallback home (the better of AdaBN and the source, or AdaBN) × floor (none, SND 3 %, SND 3 % sticky),
    all against AdaBN."""
    out = []
    for rank in RANKERS:
        for judge in dict.fromkeys(j or rank for j in JUDGES):
            out += [SelectionSpec(select_by=rank, fallback_by=judge, fallback_to=home, baseline="adabn", floor_by=f,
                                  floor_tolerance=0.03, floor_sticky=sticky)
                    for home in HOMES for f, sticky in RANKING_FLOORS]
    return out


def label(spec: SelectionSpec) -> str:
    """``im vs adabn, floor snd 3%, sticky``; with another judge ``im|mix vs …``, and ``(home adabn)`` where the
    fallback always ships AdaBN."""
    judge = spec.fallback_by or spec.select_by
    name = spec.select_by if judge == spec.select_by else f"{spec.select_by}|{judge}"
    if spec.baseline == "source":
        return f"{name} vs source"
    home = " (home adabn)" if spec.fallback_to == "adabn" else ""
    if not spec.floor_by:
        return f"{name} vs adabn{home}"
    return (f"{name} vs adabn{home}, floor {'+'.join(spec.floor_by)} {100 * spec.floor_tolerance:g}%"
            + (", sticky" if spec.floor_sticky else ""))


def load_runs(state_dirs, seed_noise: bool = False) -> list[dict]:
    """Method runs with a selection record and labelled points, with their style's AdaBN point attached.
    ``seed_noise``: also the seed-noise runs (``noise@STYLE@METHOD@seedN``; their selection sample is drawn with
    their own seed, so only a run that scored its own AdaBN point has one)."""
    steps = []
    for d in state_dirs:
        for p in sorted(Path(d).glob("*.json")):
            noise = p.stem.startswith("noise@")
            if "@" not in p.stem or p.stem.startswith("oracle@") or (noise and not seed_noise):
                continue
            style, method = p.stem.split("@")[1:3] if noise else p.stem.split("@")[:2]
            r = json.loads(p.read_text())
            steps.append({"dir": str(d), "name": p.stem, "style": style, "method": method + ("-noise" if noise else ""),
                          "device": r.get("device"), "selection": read_selection(r.get("selection"))})
    adabn = {s["style"]: adabn_candidate(s["selection"]) for s in steps if s["method"] == "adabn"}
    runs = []
    for s in steps:
        sel = s["selection"]
        if s["method"] == "adabn" or not sel or not sel.get("reference") or not sel.get("points"):
            continue
        base = matching_baseline(sel, adabn.get(s["style"]))
        if base is not None:
            runs.append({**s, "baseline": base})
    return runs


def outcome(run: dict, spec: SelectionSpec) -> dict:
    sel, base = run["selection"], run["baseline"]
    shipped = replay(sel, spec, base)["shipped"]
    best = max([p["miou"] for p in sel["points"] if p.get("miou") is not None] + [sel["reference"]["miou"],
                                                                                   base["miou"]])
    return {"regret": round(best - shipped["miou"], 2), "below_source": shipped["miou"] < sel["reference"]["miou"],
            "below_adabn": shipped["miou"] < base["miou"], "below_noise": shipped["miou"] < base["miou"] - SEED_NOISE,
            "run": f"{Path(run['dir']).name}/{run['name']}", "shipped": shipped["miou"], "adabn": base["miou"],
            "ships": shipped_name(shipped, sel["reference"], base)}


def summary(runs: list[dict], spec: SelectionSpec) -> dict:
    out = [outcome(r, spec) for r in runs]
    regrets = [o["regret"] for o in out]
    worst = max(out, key=lambda o: o["regret"])
    return {"runs": len(out), "median": statistics.median(regrets), "worst": worst["regret"], "worst_run": worst["run"],
            "mean": round(statistics.mean(regrets), 3), "below_source": sum(o["below_source"] for o in out),
            "below_adabn": sum(o["below_adabn"] for o in out), "below_noise": sum(o["below_noise"] for o in out)}


def choose(runs: list[dict], specs: list[SelectionSpec]) -> SelectionSpec:
    """Lowest worst-case shipped regret, then median, then mean (the first listed on a full tie)."""
    return min(specs, key=lambda s: (lambda m: (m["worst"], m["median"], m["mean"]))(summary(runs, s)))


def markdown(result: dict) -> str:
    """The figures as Markdown tables: every rule, leave-one-style-out, and the held-out runs."""
    out = ["| rule | median | worst (run) | mean | below source | below AdaBN (by > 0.8) |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, m in result["rules"].items():
        bold = "**" if name == result["default"] else ""
        out.append(f"| {bold}{name}{bold} | {m['median']:.2f} | {m['worst']:.2f} ({m['worst_run']}) | "
                   f"{m['mean']:.2f} | {m['below_source']} | {m['below_adabn']} ({m['below_noise']}) |")
    loso = result["leave_one_style_out"]
    if loso["pooled"]:
        out += ["", "| style left out | rule picked on the others | median | worst | below source |",
                "|---|---|---:|---:|---:|"]
        out += [f"| {s} | {v['picked']} | {v['median']:.2f} | {v['worst']:.2f} | {v['below_source']} |"
                for s, v in loso["styles"].items()]
        p = loso["pooled"]
        out.append(f"| pooled | | {p['median']:.2f} | {p['worst']:.2f} | {p['below_source']} |")
    for name, hold in result.get("holdout", {}).items():
        out += ["", f"| held out: {name}, {hold['chosen']['runs']} runs | median | worst (run) | below source | "
                    "below AdaBN |", "|---|---:|---:|---:|---:|"]
        rows = [(f"{result['chosen']} (chosen on dev)", hold["chosen"])]
        if result["default"] != result["chosen"]:
            rows.append((f"{result['default']} (the package default)", hold["default"]))
        for rule, m in rows + list(hold["rules"].items()):
            out.append(f"| {rule} | {m['median']:.2f} | {m['worst']:.2f} ({m['worst_run']}) | {m['below_source']} | "
                       f"{m['below_adabn']} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("state", nargs="+", type=Path, help="re-base step directories")
    p.add_argument("--holdout-device", help="hold out the 900-iteration runs made on this device: the rule is "
                                            "chosen (and checked leave-one-style-out) without them, then judged "
                                            "on them")
    p.add_argument("--holdout-state", type=Path, action="append", default=[],
                   help="a step directory held out whole (e.g. runs made after the rule was chosen)")
    p.add_argument("--fresh-methods", type=lambda s: [m for m in s.split(",") if m], default=[],
                   help="in a --holdout-state, these methods' runs form a group of their own (runs no rule was "
                        "designed after)")
    p.add_argument("--criteria", type=lambda s: [c for c in s.split(",") if c], default=["im"],
                   help="ranking criteria to try (each also judges the fallback): some of im, snd, mix")
    p.add_argument("--styles", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="only the runs of these styles")
    p.add_argument("--holdout-styles", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="these styles' runs are held out whole: the rule is chosen on the others, judged on them")
    p.add_argument("--family", choices=("floors", "ranking"), default="floors",
                   help="the rules tried: floors (issue 14's: IM ranks and judges, floors varied; --criteria) or "
                        "ranking (issue 26's: ranker, judge, fallback home, floor)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = p.parse_args(argv)
    every = load_runs(args.state)
    held_states = {str(s) for s in args.holdout_state}
    every += load_runs(args.holdout_state)
    every = [r for r in every if not args.styles or r["style"] in args.styles]

    def group(r: dict) -> Optional[str]:
        if r["style"] in args.holdout_styles:
            return f"held-out styles ({', '.join(args.holdout_styles)})"
        if r["dir"] in held_states:
            fresh = r["method"].split("_plus_")[0].removesuffix("+P") in args.fresh_methods
            return f"{Path(r['dir']).name} ({', '.join(args.fresh_methods) if fresh else 'ran with the baseline'})"
        if args.holdout_device and r["device"] == args.holdout_device and "900" in r["dir"]:
            return f"{Path(r['dir']).name} on {args.holdout_device}"
        return None

    runs, hold = [r for r in every if group(r) is None], [r for r in every if group(r) is not None]
    specs = ranking_grid() if args.family == "ranking" else grid(tuple(args.criteria))
    table = {label(s): summary(runs, s) for s in specs}
    print(f"{len(runs)} runs with an AdaBN point on their sample" + (f" ({len(hold)} more held out)" if hold else ""))
    print(f"{'rule':<58}{'median':>7}{'worst':>7}{'mean':>6}{'<source':>8}{'<adabn':>7}{'<-0.8':>6}  worst run")
    for name, m in table.items():
        print(f"{name:<58}{m['median']:>7.2f}{m['worst']:>7.2f}{m['mean']:>6.2f}{m['below_source']:>8}"
              f"{m['below_adabn']:>7}{m['below_noise']:>6}  {m['worst_run']}")
    chosen = choose(runs, specs)
    default = SelectionSpec()
    print(f"lowest worst-case regret: {label(chosen)}; the package default: {label(default)}")
    loso, held = {}, []
    styles = sorted({r["style"] for r in runs})
    for style in styles if len(styles) > 1 else []:
        train = [r for r in runs if r["style"] != style]
        test = [r for r in runs if r["style"] == style]
        pick = choose(train, specs)
        held += [outcome(r, pick) for r in test]
        loso[style] = {"picked": label(pick), **summary(test, pick)}
        print(f"leave {style} out: picked {label(pick)}; on {style}: median {loso[style]['median']:.2f}, worst "
              f"{loso[style]['worst']:.2f}, below source {loso[style]['below_source']}")
    pooled = None
    if held:
        regrets = [o["regret"] for o in held]
        pooled = {"median": statistics.median(regrets), "worst": max(regrets),
                  "below_source": sum(o["below_source"] for o in held),
                  "below_adabn": sum(o["below_adabn"] for o in held), "below_noise": sum(o["below_noise"] for o in held)}
        print(f"leave-one-style-out, pooled: median {pooled['median']:.2f}, worst {pooled['worst']:.2f}, below "
              f"source {pooled['below_source']}, below AdaBN {pooled['below_adabn']} ({pooled['below_noise']} by more than "
              f"{SEED_NOISE})")
    else:
        print("leave-one-style-out: needs runs on at least two styles")
    result = {"runs": len(runs), "rules": table, "chosen": label(chosen), "default": label(default),
              "leave_one_style_out": {"styles": loso, "pooled": pooled}}
    if hold:
        result["holdout"] = {}
        for name in dict.fromkeys(group(r) for r in hold):
            part = [r for r in hold if group(r) == name]
            result["holdout"][name] = {"chosen": summary(part, chosen), "default": summary(part, default),
                                       "rules": {label(s): summary(part, s) for s in specs[:2]}}
            for rule, m in [("chosen rule", result["holdout"][name]["chosen"]),
                            ("the package default", result["holdout"][name]["default"])] + list(
                    result["holdout"][name]["rules"].items()):
                print(f"held out ({name}, {len(part)} runs), {rule}: median {m['median']:.2f}, worst {m['worst']:.2f} "
                      f"({m['worst_run']}), below source {m['below_source']}, below AdaBN {m['below_adabn']}")
    if args.markdown:
        print(markdown(result))
    if args.out:
        from sfda_deploy.runs import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
