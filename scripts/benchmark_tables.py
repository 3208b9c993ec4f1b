"""docs/benchmark.json and the tables of docs/benchmark.md from the re-base's step files.

``collect`` turns the step results (``scripts/rebase_benchmark.py``) into one JSON document; ``render`` turns
that document into Markdown; ``write_docs`` writes both (the Markdown between the ``rebase`` markers of
docs/benchmark.md, the rest of that file kept). Pure functions over dicts apart from ``write_docs``.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from sfda_deploy.commands.compare import gap_closed  # noqa: F401  (re-exported: the one formula)

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- rebase:begin -->", "<!-- rebase:end -->"  # the main (300-iteration) block
MEASURABLE = 20.0   # an oracle IoU at or above this makes a class "measurable"
LOST = 5.0          # a method "loses" a class when its IoU falls this far below source-only


def seed_noise(runs: dict[str, list[float]]) -> dict:
    """Per method, the mIoUs over seeds, their sample standard deviation and range; ``threshold`` = twice
    the largest standard deviation: a difference between two single-seed results smaller than it is not
    counted as a difference."""
    out = {m: {"mious": v, "std": round(statistics.stdev(v), 2) if len(v) > 1 else None,
               "range": round(max(v) - min(v), 2)} for m, v in runs.items() if v}
    stds = [r["std"] for r in out.values() if r["std"] is not None]
    return {"methods": out, "threshold": round(2 * max(stds), 2) if stds else None}


HELD_OUT = "held_out_rule"  # the figures of issue 25's held-out rule in a run's entry (``rule_outcomes``'s key)


def held_out_spec():
    """The rule benchmark v3 tests as held out (issue 25): the package default when v3 began, pinned here so that
    a later change of the default does not rewrite the record (information maximisation ranks and judges,
    against AdaBN, with a sticky SND floor at 3 %)."""
    from sfda_deploy.adapt.selection.settings import SelectionSpec

    return SelectionSpec(select_by="im", fallback_by="im", fallback_to="better", baseline="adabn", floor_by=("snd",),
                         floor_tolerance=0.03, floor_sticky=True, fallback_margin=0.01, collapse_ref="source")


def rule_outcomes(selection: dict | None, adabn: dict | None = None, spec=None, key: str = "default_rule") -> dict:
    """Re-apply the package's default selection rule (``SelectionSpec``: criterion, fallback judge, AdaBN
    baseline and floor) to a run's scored checkpoints: the mIoU it ships, and the best checkpoint's by labels
    (any rule's ceiling). ``adabn``: the style's AdaBN run's selection record, the baseline of runs whose
    own record has none (scored before the baseline existed; used only if it was scored on the same sample).
    ``spec``: another rule than the package's default (``held_out_spec`` on the structured styles), its figures
    under ``key``, ``key``_miou, ... instead of ``default_rule``."""
    from sfda_deploy.adapt.selection.records import adabn_candidate, matching_baseline, replay, shipped_name
    from sfda_deploy.adapt.selection.settings import SelectionSpec

    points = [p for p in (selection or {}).get("points", []) if p.get("miou") is not None]
    if not points or (selection or {}).get("reference") is None:
        return {}
    spec = spec or SelectionSpec()
    baseline = matching_baseline(selection, adabn_candidate(adabn))
    d = replay(selection, spec, baseline)
    shipped = d["shipped"]
    floor = f" vs {spec.baseline}, floor {'/'.join(spec.floor_by)} {100 * spec.floor_tolerance:g}%"
    return {key: f"{spec.select_by}|{spec.fallback_by}" + (floor if baseline is not None else ""),
            f"{key}_miou": shipped["miou"], f"{key}_fallback": d["fell_back"],
            f"{key}_ships": shipped_name(shipped, selection["reference"], baseline),
            "best_checkpoint_miou": max(p["miou"] for p in points)}


def _style_entry(style, kind, source_only, oracle, methods) -> dict:
    from sfda_deploy.adapt.selection.records import read_selection
    from sfda_deploy.data.synth_styles import FAMILY

    so, orc = source_only["miou"], oracle["miou"] if oracle else None
    adabn = methods.get("adabn", {}).get("miou")

    def adabn_selection(name: str) -> dict | None:  # the baseline of the style's other runs
        return None if name == "adabn" else methods.get("adabn", {}).get("selection")

    rows = {}
    for name, r in methods.items():
        lost = {c: round(r["iou"][c] - v, 2) for c, v in source_only["iou"].items()
                if v is not None and r["iou"].get(c) is not None and r["iou"][c] < v - LOST}
        rows[name] = {"miou": r["miou"], "iou": r["iou"], "iters": r.get("iters"), "wall_s": r.get("wall_s"),
                      "gap_closed": gap_closed(r["miou"], so, orc) if orc is not None else None,
                      "gain_over_adabn": None if adabn is None else round(r["miou"] - adabn, 2),
                      "below_source_only": r["miou"] < so, "classes_lost": lost, "last_miou": r.get("last_miou"),
                      "shipped_by": (read_selection(r.get("selection")) or {}).get("select_by"),
                      **rule_outcomes(r.get("selection"), adabn_selection(name)),
                      **(rule_outcomes(r.get("selection"), adabn_selection(name), held_out_spec(), HELD_OUT)
                         if FAMILY.get(style) == "structured" else {})}
    entry = {"kind": kind, "family": FAMILY.get(style), "source_only": source_only, "oracle": oracle, "methods": rows}
    if orc:
        entry["ratio"] = round(so / orc, 3)
        if adabn is not None:
            entry["adabn_gap_closed"] = gap_closed(adabn, so, orc)
        entry["measurable_classes"] = sorted(c for c, v in oracle["iou"].items() if v is not None and v >= MEASURABLE)
    return entry


def collect(steps: dict, styles, calibrated, settings: dict) -> dict:
    """The benchmark document from ``steps`` (step name → its saved result)."""
    so_all = {**(steps.get("source-only") or {}),
              **{k.split("@", 1)[1]: v for k, v in steps.items() if k.startswith("source-only@")}}
    doc = {"settings": settings, "styles": {}}
    if steps.get("freeze"):
        doc["renderer"] = steps["freeze"]
    if "source" in so_all:
        doc["source_val_miou"] = so_all["source"]["miou"]
    if steps.get("source"):
        doc["source_training"] = {k: steps["source"][k] for k in ("wall_s", "recipe", "sha256")}
    for style in styles:
        if style not in so_all:
            continue
        methods = {k.split("@", 1)[1]: v for k, v in steps.items() if k.split("@", 1)[0] == style}
        kind = "calibrated" if style in calibrated else "structured" if style in settings.get("structured", ()) \
            else "stress"
        doc["styles"][style] = _style_entry(style, kind, so_all[style], steps.get(f"oracle@{style}"), methods)
    by_style: dict[str, dict[str, list[float]]] = {}
    for k, v in steps.items():
        if k.startswith("noise@"):
            _, style, method, _ = k.split("@")
            by_style.setdefault(style, {}).setdefault(method, []).append(v["miou"])
    for style, noise in by_style.items():
        for m in list(noise):  # the main run is the seed-0 sample
            main = steps.get(f"{style}@{m}")
            if main is not None:
                noise[m].insert(0, main["miou"])
    ns = settings.get("noise_style")
    if ns in by_style:
        doc["seed_noise"] = {"style": ns, **seed_noise(by_style[ns])}
    others = {s: {"style": s, **seed_noise(n)} for s, n in by_style.items() if s != ns}
    if others:
        doc["seed_noise_other_styles"] = others
    record = structured_record(doc["styles"], list(doc["styles"]))
    if record:
        doc["structured_record"] = record
        doc["structured_record_default_rule"] = structured_record(doc["styles"], list(doc["styles"]), "default_rule")
    walls = [v["wall_s"] for k, v in steps.items() if isinstance(v, dict) and "wall_s" in v]
    doc["wall_s"] = {"sum_of_steps": round(sum(walls), 1), "elapsed": (steps.get("wall") or {}).get("seconds")}
    return doc


def _f(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def benchmarks_named(styles: dict) -> str:
    """"Benchmark v2", "Benchmark v3" or "Benchmarks v2 and v3": what a block's styles belong to (v3: the
    structured family)."""
    families = {v.get("family") for v in styles.values()}
    versions = [v for v, has in (("v2", bool(families - {"structured"})), ("v3", "structured" in families)) if has]
    return "Benchmarks v2 and v3" if len(versions) == 2 else f"Benchmark {versions[0] if versions else 'v2'}"


def render(doc: dict, title: str | None = None) -> str:
    """Markdown: calibration table, mIoU per method and style, gain over AdaBN, classes lost, seed noise."""
    st = doc["styles"]
    names = list(st)
    out = [title or f"## {benchmarks_named(st)}: synthetic shifts calibrated to the real ones", "",
           f"Generated by `python -m scripts.rebase_benchmark` (settings in docs/{doc.get('json', 'benchmark.json')}). "
           "Wall time of the steps: "
           f"{_f(doc['wall_s']['sum_of_steps'] / 60, '.0f')} min in all"
           + (f", {_f(doc['wall_s']['elapsed'] / 60, '.0f')} min elapsed" if doc["wall_s"].get("elapsed") else "")
           + ".", ""]
    if "source_val_miou" in doc:
        out += [f"Source model on source-style val: **{doc['source_val_miou']:.1f} mIoU**.", ""]
    if "renderer" in doc:
        r = doc["renderer"]
        out += [f"Renderer frozen at {r['frozen_at']} (manifest version {r['manifest_version']}, sha256 "
                f"`{r['renderer_sha256'][:16]}…`), before any method ran on a structured style."]
        held = r.get("held_back") or {}
        out += (["Held back from the methods (outside a calibration target at the freeze): "
                 + "; ".join(f"{s} ({', '.join(m)})" for s, m in held.items()) + "."] if held else []) + [""]
    out += ["| style | family | source-only | AdaBN | oracle | source-only ÷ oracle | AdaBN's share of the gap | "
            "classes with oracle IoU ≥ 20 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in names:
        e = st[s]
        orc = e["oracle"]["miou"] if e["oracle"] else None
        meas = len(e.get("measurable_classes", [])) if orc else None
        adabn = e["methods"].get("adabn", {}).get("miou")
        out.append(f"| {s} | {e.get('family') or e['kind']} | {e['source_only']['miou']:.1f} | {_f(adabn)} | {_f(orc)} "
                   f"| {_f(e.get('ratio'), '.3f')} | {_f(e.get('adabn_gap_closed'), '.0f')} % | {_f(meas, 'd')} |")
    methods = list(dict.fromkeys(m for s in names for m in st[s]["methods"]))
    out += ["", "mIoU (gap closed %, gain over AdaBN) at one budget per method:", "",
            "| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
            "| source-only | " + " | ".join(f"{st[s]['source_only']['miou']:.1f}" for s in names) + " |"]
    for m in methods:
        cells = []
        for s in names:
            r = st[s]["methods"].get(m)
            if r is None:
                cells.append("–")
                continue
            mark = "**" if r["below_source_only"] else ""
            cells.append(f"{mark}{r['miou']:.1f}{mark} ({_f(r['gap_closed'], '.0f')} %, "
                         f"{_f(r['gain_over_adabn'], '+.1f')})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", "Bold: below source-only. Gap closed = (method − source-only) ÷ (oracle − source-only). Each run "
            "shipped the checkpoint its label-free selection chose (criterion `im`, fallback to the source), "
            "pinned by the re-base for every row."]
    out += _rule_table(st, names, methods)
    out += _target_table(st, names)
    out += _structured_table(doc.get("structured_record") or {}, HELD_OUT_TITLE)
    from sfda_deploy.adapt.selection.settings import SelectionSpec

    default = default_rule_name(st, names) or ""
    out += _structured_table(doc.get("structured_record_default_rule") or {},
                             f"The same runs under the package's default rule (`{default}`, fallback "
                             f"`{SelectionSpec().fallback_to}`; issue 26's, chosen on the dev runs):")
    lost = [(s, m, r["classes_lost"]) for s in names for m, r in st[s]["methods"].items() if r["classes_lost"]]
    if lost:
        out += ["", f"Classes a method loses (IoU more than {LOST:.0f} below source-only):", ""]
        out += [f"- {s} / {m}: " + ", ".join(f"{c} {d:+.1f}" for c, d in sorted(cl.items(), key=lambda x: x[1]))
                for s, m, cl in lost]
    for n in ([doc["seed_noise"]] if "seed_noise" in doc else []) + list(doc.get("seed_noise_other_styles", {}).values()):
        out += ["", f"Seed-to-seed spread on `{n['style']}` (same data and budget, seeds 0, 1, 2, …):", ""]
        out += [f"- {m}: mIoU {', '.join(f'{v:.2f}' for v in r['mious'])} (std {_f(r['std'], '.2f')}, "
                f"range {r['range']:.2f})" for m, r in n["methods"].items()]
        if n.get("threshold") is not None:
            out += ["", f"A difference between two single-seed results on `{n['style']}` counts only above "
                    f"**{n['threshold']:.1f} mIoU** (twice the largest standard deviation)."]
    return "\n".join(out) + "\n"


def default_rule_name(st: dict, names: list) -> str | None:
    """The package default rule's short name as the runs' entries record it (``rule_outcomes``); None if no run has one."""
    return next((r["default_rule"] for s in names for r in st[s]["methods"].values() if "default_rule" in r), None)


def _rule_table(st: dict, names: list, methods: list) -> list[str]:
    """The same runs under the package's default rule, next to the best checkpoint and the last iterate."""
    rule = default_rule_name(st, names)
    if rule is None:
        return []
    out = ["", f"The same runs with the package's default rule re-applied to their scored checkpoints (`{rule}`: "
           "the first criterion picks among the checkpoints that keep the floor, and must beat the fallback, AdaBN "
           "(or the source: `--fallback-to`), on the second) / the best checkpoint by labels (the "
           "ceiling of any label-free rule) / the last iterate:", "",
           "| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in methods:
        cells = []
        for s in names:
            r = st[s]["methods"].get(m)
            if r is None or "default_rule_miou" not in r:
                cells.append("–")
                continue
            adabn = st[s]["methods"].get("adabn", {}).get("miou")
            gain = "" if adabn is None else f" ({r['default_rule_miou'] - adabn:+.1f})"
            mark = {"adabn": "†", "source": "‡"}.get(r.get("default_rule_ships"), "")
            cells.append(f"{r['default_rule_miou']:.1f}{mark}{gain} / {r['best_checkpoint_miou']:.1f} / "
                         f"{_f(r['last_miou'])}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out + ["", "In brackets: the default rule's gain over AdaBN. †: the rule ships the AdaBN baseline "
                  "(fallback); ‡: the source."]


def regret(r: dict, source_only: float, adabn: float | None, key: str = "default_rule") -> float | None:
    """What a rule (its figures under ``key``) left on the table: the best of the run's checkpoints by labels,
    AdaBN and the source, minus what it shipped."""
    if r.get(f"{key}_miou") is None:
        return None
    ceiling = max([r["best_checkpoint_miou"], source_only] + ([adabn] if adabn is not None else []))
    return round(ceiling - r[f"{key}_miou"], 2)


def structured_record(st: dict, names: list, key: str = HELD_OUT) -> dict:
    """A rule's record on the structured styles (its figures under ``key``; issue 25's: the held-out rule): per
    style, what it ships against source-only and AdaBN, the label-picked ceiling of any rule, and the regrets;
    over all their runs, median and worst."""
    per_style, regrets = {}, []
    for s in names:
        e = st[s]
        if e.get("family") != "structured":
            continue
        so, adabn = e["source_only"]["miou"], e["methods"].get("adabn", {}).get("miou")
        runs = {m: r for m, r in e["methods"].items() if m != "adabn" and r.get(f"{key}_miou") is not None}
        if not runs:
            continue
        rs = {m: regret(r, so, adabn, key) for m, r in runs.items()}
        regrets += list(rs.values())
        best = max(runs, key=lambda m: runs[m]["best_checkpoint_miou"])
        per_style[s] = {"below_source_only": sorted(m for m, r in runs.items() if r[f"{key}_miou"] < so),
                        "shipped_minus_adabn": {m: None if adabn is None else round(r[f"{key}_miou"] - adabn, 2)
                                                for m, r in runs.items()},
                        "ceiling": {"method": best, "miou": runs[best]["best_checkpoint_miou"],
                                    "over_adabn": None if adabn is None
                                    else round(runs[best]["best_checkpoint_miou"] - adabn, 2)},
                        "regret": rs}
    if not regrets:
        return {}
    return {"styles": per_style, "runs": len(regrets), "median_regret": round(statistics.median(regrets), 2),
            "worst_regret": max(regrets)}


HELD_OUT_TITLE = ("Benchmark v3, structured styles: the held-out rule (the default when v3 began: `im|im` against "
                  "AdaBN, sticky SND floor at 3 %) on every method's run; the ceiling is the best checkpoint of any "
                  "run by labels (what no label-free rule can beat); regret = the best of the run's checkpoints, "
                  "AdaBN and the source, minus what shipped:")


def _structured_table(record: dict, title: str) -> list[str]:
    if not record:
        return []
    rows = []
    for s, r in record["styles"].items():
        gains = [v for v in r["shipped_minus_adabn"].values() if v is not None]
        c = r["ceiling"]
        rows.append(f"| {s} | {', '.join(r['below_source_only']) or 'none'} | "
                    f"{_f(min(gains) if gains else None, '+.1f')} … {_f(max(gains) if gains else None, '+.1f')} | "
                    f"{c['method']} {c['miou']:.1f} ({_f(c['over_adabn'], '+.1f')}) | "
                    f"{statistics.median(r['regret'].values()):.2f} / {max(r['regret'].values()):.2f} |")
    return ["", title, "",
            "| style | shipped below source-only | shipped − AdaBN (min … max) | ceiling (− AdaBN) | "
            "regret median / worst |", "|---|---|---:|---|---:|", *rows, "",
            f"Over all {record['runs']} structured runs: median regret **{record['median_regret']:.2f}**, worst "
            f"**{record['worst_regret']:.2f}**."]


def _target_table(st: dict, names: list) -> list[str]:
    """Issue 14's quality targets on the calibrated styles, from what the default rule ships (``default_rule_miou``):
    ATP's gap closed (≥ 60 %) and gain over AdaBN (≥ +2), the best row's gap closed (≥ 70 %) and gain (≥ +3)."""
    rows = []
    for s in names:
        e = st[s]
        ms = {m: r for m, r in e["methods"].items() if m != "adabn" and r.get("default_rule_miou") is not None}
        adabn = e["methods"].get("adabn", {}).get("miou")
        if e["kind"] != "calibrated" or "atp" not in ms or adabn is None or not e.get("oracle"):
            continue
        so, orc = e["source_only"]["miou"], e["oracle"]["miou"]
        best = max(ms, key=lambda m: ms[m]["default_rule_miou"])
        atp, top = ms["atp"]["default_rule_miou"], ms[best]["default_rule_miou"]
        below = [m for m, r in ms.items() if r["default_rule_miou"] < so]
        fell = "†" if ms[best].get("default_rule_ships") == "adabn" else ""
        rows.append(f"| {s} | {gap_closed(atp, so, orc):.0f} % | {atp - adabn:+.1f} | {best}{fell} ({top:.1f}) | "
                    f"{gap_closed(top, so, orc):.0f} % | {top - adabn:+.1f} | {', '.join(below) or 'none'} |")
    if not rows:
        return []
    return ["", "Issue 14's quality targets on the calibrated styles, from what the default rule ships (gap closed = "
            "(shipped − source-only) ÷ (oracle − source-only); one seed: differences under the seed-noise "
            "threshold below do not count):", "",
            "| style | ATP gap closed (≥ 60 %) | ATP − AdaBN (≥ +2) | best row | its gap closed (≥ 70 %) | "
            "its − AdaBN (≥ +3) | rows below source-only |", "|---|---:|---:|---|---:|---:|---|", *rows,
            "", "†: that row ships the AdaBN baseline (its own checkpoints did not pass the rule)."]


def markers(name: str = "rebase") -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(text: str, block: str, name: str = "rebase") -> str:
    """``text`` with the part between the ``name`` markers replaced by ``block`` (markers added at the top if
    absent; at the end for a block other than the main one)."""
    begin, end = markers(name)
    wrapped = f"{begin}\n{block}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + wrapped + rest.split(end, 1)[1]
    if name != "rebase":
        return text.rstrip("\n") + f"\n\n{wrapped}\n"
    title, _, body = text.partition("\n")
    return f"{title}\n\n{wrapped}\n{body}" if title.startswith("# ") else f"{wrapped}\n\n{text}"


SHARED_STEPS = ("source", "source-only", "wall")  # plus oracle@* and *@adabn: the same at every budget


def load_steps(state_dir: Path, base: Path | None = None) -> dict:
    """Step name → result under ``state_dir``; with ``base``, the budget-free steps it lacks (source, source-only,
    oracles, AdaBN) come from there."""
    read = lambda d: {p.stem.replace("_plus_", "+"): json.loads(p.read_text())  # noqa: E731
                      for p in sorted(Path(d).glob("*.json"))}
    steps = read(state_dir)
    if base is not None:
        for k, v in read(base).items():
            shared = k in SHARED_STEPS or k.startswith(("oracle@", "source-only@")) or k.endswith("@adabn")
            if k not in steps and k != "wall" and shared:
                steps[k] = v
    return steps


def write_docs(state_dir: Path, docs: Path = ROOT / "docs", base: Path | None = None, name: str = "rebase") -> Path:
    """``docs``/benchmark.json and the tables of ``docs``/benchmark.md from the step files under ``state_dir``
    (another budget: ``name`` names its block and its JSON, ``base`` lends the budget-free steps)."""
    from sfda_deploy.runs import write_json, write_text

    steps = load_steps(state_dir, base)
    settings = steps.pop("settings", None)
    if settings is None:
        raise SystemExit(f"{state_dir} has no settings.json: run scripts/rebase_benchmark.py first")
    doc = collect(steps, settings["styles"], settings["calibrated"], settings)
    if base is not None:  # the borrowed steps' time belongs to the base's re-base
        own = load_steps(state_dir)
        doc["wall_s"]["sum_of_steps"] = round(sum(v["wall_s"] for v in own.values()
                                                  if isinstance(v, dict) and "wall_s" in v), 1)
    doc["json"] = "benchmark.json" if name == "rebase" else f"benchmark_{name}.json"
    write_json(docs / doc["json"], doc)
    title = None if name == "rebase" else (f"## {benchmarks_named(doc['styles'])} at "
                                           f"{settings.get('budget_iters_per_method')} iterations per method "
                                           f"(`{Path(state_dir).name}`)")
    md = docs / "benchmark.md"
    text = render(doc, title)
    write_text(md, replace_block(md.read_text() if md.is_file() else "# Benchmarks\n", text, name))
    print(text)
    return md


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Rebuild docs/benchmark.json and docs/benchmark.md's tables from the "
                                            "re-base's step files (no training).")
    p.add_argument("--state", type=Path, default=ROOT / "docs" / "benchmark_steps")
    p.add_argument("--base", type=Path, help="state directory lending the budget-free steps (source-only, oracles, "
                                             "AdaBN) to a --state of another budget")
    p.add_argument("--block", default="rebase", help="the marked block of docs/benchmark.md to write (another budget: "
                                                     "e.g. rebase900, with docs/benchmark_rebase900.json)")
    args = p.parse_args(argv)
    write_docs(args.state, base=args.base, name=args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
