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

from sfda_deploy.adapt.compare import gap_closed  # noqa: F401  (re-exported: the one formula)

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- rebase:begin -->", "<!-- rebase:end -->"
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


def rule_outcomes(selection: dict | None) -> dict:
    """Re-apply the package's default selection rule (``SelectionSpec``'s criterion and fallback judge) to a
    run's scored checkpoints: the mIoU it ships, and the best checkpoint's by labels (any rule's ceiling)."""
    from sfda_deploy.adapt.selection import SelectionSpec
    from sfda_deploy.adapt.validation import decide

    points = [p for p in (selection or {}).get("points", []) if p.get("miou") is not None]
    ref = (selection or {}).get("reference")
    if not points or ref is None:
        return {}
    spec = SelectionSpec()
    shipped = decide(points, ref, spec.criterion, selection["margin"], selection["fallback_enabled"], spec.guard)
    return {"default_rule": f"{spec.criterion}|{spec.guard}", "default_rule_miou": shipped["shipped"]["miou"],
            "default_rule_fallback": shipped["fallback"], "best_checkpoint_miou": max(p["miou"] for p in points)}


def _style_entry(style, kind, source_only, oracle, methods) -> dict:
    so, orc = source_only["miou"], oracle["miou"] if oracle else None
    adabn = methods.get("adabn", {}).get("miou")
    rows = {}
    for name, r in methods.items():
        lost = {c: round(r["iou"][c] - v, 2) for c, v in source_only["iou"].items()
                if v is not None and r["iou"].get(c) is not None and r["iou"][c] < v - LOST}
        rows[name] = {"miou": r["miou"], "iou": r["iou"], "iters": r.get("iters"), "wall_s": r.get("wall_s"),
                      "gap_closed": gap_closed(r["miou"], so, orc) if orc is not None else None,
                      "gain_over_adabn": None if adabn is None else round(r["miou"] - adabn, 2),
                      "below_source_only": r["miou"] < so, "classes_lost": lost, "last_miou": r.get("last_miou"),
                      "shipped_by": (r.get("selection") or {}).get("criterion"), **rule_outcomes(r.get("selection"))}
    entry = {"kind": kind, "source_only": source_only, "oracle": oracle, "methods": rows}
    if orc:
        entry["ratio"] = round(so / orc, 3)
        entry["measurable_classes"] = sorted(c for c, v in oracle["iou"].items() if v is not None and v >= MEASURABLE)
    return entry


def collect(steps: dict, styles, calibrated, settings: dict) -> dict:
    """The benchmark document from ``steps`` (step name → its saved result)."""
    so_all = steps.get("source-only") or {}
    doc = {"settings": settings, "styles": {}}
    if "source" in so_all:
        doc["source_val_miou"] = so_all["source"]["miou"]
    if steps.get("source"):
        doc["source_training"] = {k: steps["source"][k] for k in ("wall_s", "recipe", "sha256")}
    for style in styles:
        if style not in so_all:
            continue
        methods = {k.split("@", 1)[1]: v for k, v in steps.items() if k.split("@", 1)[0] == style}
        kind = "calibrated" if style in calibrated else "stress"
        doc["styles"][style] = _style_entry(style, kind, so_all[style], steps.get(f"oracle@{style}"), methods)
    noise = {}
    for k, v in steps.items():
        if k.startswith("noise@"):
            _, ns, method, _ = k.split("@")
            noise.setdefault(method, []).append(v["miou"])
    ns = settings.get("noise_style")
    for m in list(noise):  # the main run is the seed-0 sample
        main = steps.get(f"{ns}@{m}")
        if main is not None:
            noise[m].insert(0, main["miou"])
    if noise:
        doc["seed_noise"] = {"style": ns, **seed_noise(noise)}
    walls = [v["wall_s"] for k, v in steps.items() if isinstance(v, dict) and "wall_s" in v]
    doc["wall_s"] = {"sum_of_steps": round(sum(walls), 1), "elapsed": (steps.get("wall") or {}).get("seconds")}
    return doc


def _f(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def render(doc: dict) -> str:
    """Markdown: calibration table, mIoU per method and style, gain over AdaBN, classes lost, seed noise."""
    st = doc["styles"]
    names = list(st)
    out = ["## Benchmark v2: synthetic shifts calibrated to the real ones", "",
           f"Generated by `scripts/rebase_benchmark.py` (settings in docs/benchmark.json). Wall time of the steps: "
           f"{_f(doc['wall_s']['sum_of_steps'] / 60, '.0f')} min in all"
           + (f", {_f(doc['wall_s']['elapsed'] / 60, '.0f')} min elapsed" if doc["wall_s"].get("elapsed") else "")
           + ".", ""]
    if "source_val_miou" in doc:
        out += [f"Source model on source-style val: **{doc['source_val_miou']:.1f} mIoU**.", ""]
    out += ["| style | kind | source-only | oracle | source-only ÷ oracle | classes with oracle IoU ≥ 20 |",
            "|---|---|---:|---:|---:|---:|"]
    for s in names:
        e = st[s]
        orc = e["oracle"]["miou"] if e["oracle"] else None
        meas = len(e.get("measurable_classes", [])) if orc else None
        out.append(f"| {s} | {e['kind']} | {e['source_only']['miou']:.1f} | {_f(orc)} | {_f(e.get('ratio'), '.2f')} "
                   f"| {_f(meas, 'd')} |")
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
    lost = [(s, m, r["classes_lost"]) for s in names for m, r in st[s]["methods"].items() if r["classes_lost"]]
    if lost:
        out += ["", f"Classes a method loses (IoU more than {LOST:.0f} below source-only):", ""]
        out += [f"- {s} / {m}: " + ", ".join(f"{c} {d:+.1f}" for c, d in sorted(cl.items(), key=lambda x: x[1]))
                for s, m, cl in lost]
    if "seed_noise" in doc:
        n = doc["seed_noise"]
        out += ["", f"Seed-to-seed spread on `{n['style']}` (same data and budget, seeds 0, 1, 2, …):", ""]
        out += [f"- {m}: mIoU {', '.join(f'{v:.2f}' for v in r['mious'])} (std {_f(r['std'], '.2f')}, "
                f"range {r['range']:.2f})" for m, r in n["methods"].items()]
        if n.get("threshold") is not None:
            out += ["", f"A difference between two single-seed results counts only above **{n['threshold']:.1f} mIoU** "
                    "(twice the largest standard deviation)."]
    return "\n".join(out) + "\n"


def _rule_table(st: dict, names: list, methods: list) -> list[str]:
    """The same runs under the package's default rule, next to the best checkpoint and the last iterate."""
    rule = next((r["default_rule"] for s in names for r in st[s]["methods"].values() if "default_rule" in r), None)
    if rule is None:
        return []
    out = ["", f"The same runs with the package's default rule re-applied to their scored checkpoints (`{rule}`: "
           "the first criterion picks, the fallback compares with the source on the second) / the best "
           "checkpoint by labels (the ceiling of any label-free rule) / the last iterate:", "",
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
            cells.append(f"{r['default_rule_miou']:.1f}{gain} / {r['best_checkpoint_miou']:.1f} / "
                         f"{_f(r['last_miou'])}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out + ["", "In brackets: the default rule's gain over AdaBN."]


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block`` (markers added at the top if absent)."""
    wrapped = f"{MARK_BEGIN}\n{block}{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        return head + wrapped + rest.split(MARK_END, 1)[1]
    title, _, body = text.partition("\n")
    return f"{title}\n\n{wrapped}\n{body}" if title.startswith("# ") else f"{wrapped}\n\n{text}"


def write_docs(state_dir: Path, docs: Path = ROOT / "docs") -> Path:
    """``docs``/benchmark.json and the tables of ``docs``/benchmark.md from the step files under ``state_dir``."""
    from sfda_deploy.runs import write_json, write_text

    steps = {p.stem.replace("_plus_", "+"): json.loads(p.read_text()) for p in sorted(Path(state_dir).glob("*.json"))}
    settings = steps.pop("settings", None)
    if settings is None:
        raise SystemExit(f"{state_dir} has no settings.json: run scripts/rebase_benchmark.py first")
    doc = collect(steps, settings["styles"], settings["calibrated"], settings)
    write_json(docs / "benchmark.json", doc)
    md = docs / "benchmark.md"
    write_text(md, replace_block(md.read_text() if md.is_file() else "# Benchmarks\n", render(doc)))
    print(render(doc))
    return md


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Rebuild docs/benchmark.json and docs/benchmark.md's tables from the "
                                            "re-base's step files (no training).")
    p.add_argument("--state", type=Path, default=ROOT / "docs" / "benchmark_steps")
    write_docs(p.parse_args(argv).state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
