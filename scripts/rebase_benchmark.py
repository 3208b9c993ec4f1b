"""Re-base the built-in benchmark in one command: data, source model, oracles, every method on every style.

    OMP_NUM_THREADS=1 python -m scripts.rebase_benchmark            # everything, resumable
    python -m scripts.benchmark_tables                               # tables from the steps so far

Each step (``source``, ``oracle@<style>``, ``source-only`` (and ``source-only@<style>`` for a style added
later), ``<style>@<method>``, ``noise@…``) writes its result
to ``--state/<step>.json`` when it finishes; a step whose file exists is not run again, so the re-base can be
stopped at any point (Ctrl-C, a lost session) and continued with the same command. The step files are small
JSON (no weights) and are kept in the repository (docs/benchmark_steps/): they are what docs/benchmark.json is
computed from. ``--workers N`` runs that many steps side by side (one thread each).

Benchmark v3's structured styles are calibrated on training-free numbers only (source-only, AdaBN, oracle:
``--steps oracles,source-only,methods --methods adabn``), then frozen with ``--freeze`` (the renderer's hash and the
time go to ``--state/freeze.json``); no other method runs on a structured style before the freeze, nor after the
renderer changed.

Writes docs/benchmark.json (per style: source-only, oracle, every method's mIoU and per-class IoU, gap closed,
gain over AdaBN, budget, wall time) and the tables of docs/benchmark.md between its ``rebase`` markers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = ROOT / "docs" / "benchmark_steps"
BUNDLED = ROOT / "sfda_deploy" / "assets" / "source_mobilenetv2_aspp.safetensors"
# The bundled source model's recipe (README "Bundled model"); oracles use the same net and budget.
SOURCE_RECIPE = dict(arch="mobilenetv2_aspp", iters=3000, batch=4, crop=(128, 128), lr=1e-3)
# Every row of the comparison: a method, "+P" appends ATP's stage P (--propagate) to a peer, and named
# variants (a method with options).
METHODS = ("adabn", "atp", "atp-scl0.1", "ldbe", "prsfda", "hiast", "cpsl", "ldbe+P", "prsfda+P", "hiast+P",
           "cpsl+P")
VARIANTS = {"atp-scl0.1": ("atp", {"scl_temperature": 0.1})}  # the clean form of ATP's L_scl (calibrated styles)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- steps (each returns a JSON-able dict; run in a worker process) --------------------------------------
def _threads():
    import torch

    torch.set_num_threads(1)


def step_source(args) -> dict:
    """Train the source model on the ``source`` style with the bundled recipe; copy it to --source-out."""
    _threads()
    from sfda_deploy.commands.adapt import run_train_source
    from sfda_deploy.config import TrainSourceConfig

    t0 = time.perf_counter()
    cfg = TrainSourceConfig(target="cityscapes", data_root=str(args.data / "source"), eval_every=1000, workers=0,
                            seed=args.seed, name="rebase-source", **SOURCE_RECIPE)  # README's command
    ckpt = run_train_source(cfg) / "model.safetensors"
    return {"checkpoint": str(ckpt), "sha256": sha256(ckpt), "wall_s": round(time.perf_counter() - t0, 1),
            "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in SOURCE_RECIPE.items()}}


def step_oracle(args, style: str) -> dict:
    """Same net and budget as the source model, trained on the labelled train split of ``style``."""
    _threads()
    from sfda_deploy.commands.adapt import run_train_source
    from sfda_deploy.config import TrainSourceConfig

    t0 = time.perf_counter()
    cfg = TrainSourceConfig(target="cityscapes", data_root=str(args.data / style), eval_every=0, workers=0,
                            seed=args.seed, name=f"rebase-oracle-{style}", **SOURCE_RECIPE)
    ckpt = run_train_source(cfg) / "model.safetensors"
    wall = round(time.perf_counter() - t0, 1)
    return {**_evaluate(ckpt, args.data, style), "wall_s": wall}


def _evaluate(ckpt: Path, data: Path, style: str) -> dict:
    from torch.utils.data import DataLoader

    from sfda_deploy import load_model
    from sfda_deploy.data import build_dataset
    from sfda_deploy.evaluate import evaluate_model

    model, meta = load_model(ckpt)
    loader = DataLoader(build_dataset("cityscapes", data / style, "val", class_set=meta.class_set), batch_size=4)
    r = evaluate_model(model, meta, loader, progress=False)
    return {"miou": r["miou"], "iou": r["iou"]}


def step_source_only(args, source: Path, styles) -> dict:
    _threads()
    return {style: _evaluate(source, args.data, style) for style in ("source", *styles)}


def step_source_only_style(args, source: Path, style: str) -> dict:
    """Source-only on a style added after the ``source-only`` step ran."""
    _threads()
    return _evaluate(source, args.data, style)


def style_data_sha256(data: Path, style: str) -> str:
    """SHA-256 over every file of one style's rendered folder (relative paths and bytes, in sorted order)."""
    root = Path(data) / style
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def freeze(state: "State", styles, data: Path | None = None) -> dict:
    """Freeze the structured styles: refuse unless each has its training-free calibration numbers
    (source-only, AdaBN, oracle); record the renderer's hash, the time, those numbers, each style's verdict on
    the calibration targets (``calibrate_styles.TARGETS``) and, given ``data``, the hash of each style's
    rendered files. A style that misses a target is recorded but held back: methods run only on the styles that
    meet every target (``check_frozen``).

    A later freeze (a style added or retuned: a new renderer) keeps the styles an earlier one froze, with their
    freeze time, as long as the new renderer draws their files byte for byte as before; it refuses otherwise.
    """
    from datetime import datetime, timezone

    from scripts.calibrate_styles import verdict
    from sfda_deploy.data.synth_styles import STRUCTURED
    from sfda_deploy.data.synthetic import VERSION, renderer_sha256

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    so = {**(state.get("source-only") or {}), **{s: state.get(f"source-only@{s}") for s in styles}}
    table = {}
    for s in (s for s in styles if s in STRUCTURED):
        adabn, oracle = state.get(f"{s}@adabn"), state.get(f"oracle@{s}")
        if so.get(s) is None or adabn is None or oracle is None:
            raise SystemExit(f"cannot freeze: {s} lacks its source-only, AdaBN or oracle step (run --steps "
                             "oracles,source-only,methods --methods adabn first)")
        table[s] = verdict(so[s]["miou"], adabn["miou"], oracle["miou"], oracle["iou"])
    before = state.get("freeze") or {}
    same_renderer = before.get("renderer_sha256") == renderer_sha256()
    kept = [s for s in before.get("styles", []) if s not in table]
    hashes = {s: style_data_sha256(data, s) for s in [*table, *kept]} if data is not None else {}
    for s in kept:
        if not same_renderer and before.get("data_sha256", {}).get(s) != hashes.get(s):
            when = before.get("style_frozen_at", {}).get(s, before["frozen_at"])  # records before per-style freezes lack it
            raise SystemExit(f"cannot freeze: {s} was frozen at {when}"
                             " and this renderer draws its files differently (or --data lacks them): keep the "
                             "renderer's code for it as it was")
    frozen = [*kept, *(s for s, v in table.items() if all(v["meets"].values()))]
    earlier = {s: v for s, v in before.get("calibration", {}).items() if s not in table}  # frozen or held back
    held_back = {**{s: v for s, v in before.get("held_back", {}).items() if s not in table},
                 **{s: [k for k, ok in v["meets"].items() if not ok] for s, v in table.items()
                    if not all(v["meets"].values())}}
    frozen_at = before.get("style_frozen_at", {})
    record = {"renderer_sha256": renderer_sha256(), "manifest_version": VERSION, "frozen_at": now,
              "calibration": {**earlier, **table}, "styles": frozen, "held_back": held_back,
              "style_frozen_at": {s: frozen_at.get(s, before.get("frozen_at")) if s in kept else now for s in frozen},
              "data_sha256": {s: hashes[s] for s in frozen if s in hashes}}
    if same_renderer:  # the same renderer as before: nothing it froze may lose its freeze time
        record["frozen_at"] = before.get("frozen_at", now)
        record["style_frozen_at"].update({s: record["frozen_at"] for s in before.get("styles", []) if s in frozen})
    state.put("freeze", record)
    return record


def check_frozen(state: "State", styles=(), data: Path | None = None) -> None:
    """Methods may run on a structured style only once it is frozen inside every calibration target, and only on
    the renderer it was frozen with, or on a later one that draws its files (in ``data``) byte for byte alike."""
    from sfda_deploy.data.synthetic import renderer_sha256

    record = state.get("freeze")
    if record is None:
        raise SystemExit("the structured styles are not frozen: calibrate (training-free steps), then --freeze, "
                         "before any method runs on them")
    for s in styles:
        if s not in record.get("styles", record["calibration"]):
            missed = ", ".join(record.get("held_back", {}).get(s, ["not calibrated"]))
            raise SystemExit(f"{s} is held back from the methods: at the freeze it missed its calibration "
                             f"target(s) ({missed}); a retune is a new renderer and a new freeze")
    if record["renderer_sha256"] == renderer_sha256():
        return
    for s in styles or record.get("styles", []):
        frozen = record.get("data_sha256", {}).get(s)
        if frozen is None or data is None or style_data_sha256(data, s) != frozen:
            raise SystemExit(f"the renderer changed since the freeze of {record['frozen_at']} (hash "
                             f"{record['renderer_sha256'][:12]}…) and {s}'s files are not the frozen ones: a "
                             "frozen benchmark is not re-tuned; put the old renderer back")


def method_config(args, source: Path, style: str, method: str, seed: int):
    """The ``AdaptConfig`` of one method run: the compare budget (``--iters`` in all, split evenly over its stages)
    and the selection settings the re-base pins (``--select-by``, ``--fallback-by``, ``--fallback-to``,
    ``--baseline``), whatever the package's defaults are."""
    from sfda_deploy.adapt.methods import get_method
    from sfda_deploy.commands.compare import stage_iters
    from sfda_deploy.config import AdaptConfig

    base, propagate = method.removesuffix("+P"), method.endswith("+P")
    base, options = VARIANTS.get(base, (base, {}))
    stages = len(get_method(base).stages) + int(propagate)
    trains = base != "adabn" or propagate  # AdaBN alone trains nothing: it takes no budget
    iters = stage_iters(args.iters, stages, method) if trains else None
    return AdaptConfig(target="cityscapes", data_root=str(args.data / style), source=str(source), method=base,
                       propagate=propagate, iters=iters, batch=args.batch if trains else None,
                       crop=tuple(args.crop) if trains else None, workers=0,
                       seed=seed, name=f"rebase-{style}-{method.replace('+', '-')}", options=dict(options),
                       device=args.device, amp=args.amp, select_by=args.select_by, fallback_by=args.fallback_by,
                       fallback_to=args.fallback_to, baseline=args.baseline)


def step_method(args, source: Path, style: str, method: str, seed: int) -> dict:
    """One method on one style at the compare budget (``method_config``)."""
    _threads()
    from sfda_deploy.commands.adapt import run_adapt
    from sfda_deploy.commands.compare import method_result

    cfg = method_config(args, source, style, method, seed)
    t0 = time.perf_counter()
    run_dir = run_adapt(cfg)
    result = method_result(run_dir)
    result.pop("before", None)
    result["selection"] = selection_points(run_dir)
    return {**result, "wall_s": round(time.perf_counter() - t0, 1), "seed": seed, "options": dict(cfg.options),
            "run_dir": str(run_dir), "device": args.device, "amp": args.amp}


def selection_points(run_dir: Path) -> dict:
    """The run's label-free selection without weights or marginals: the source's and every scored point's
    criteria, predicted-class shares and (labelled val) mIoU, so any selection rule (and any collapse reference:
    the source's shares or AdaBN's) can be re-applied to the run afterwards."""
    from sfda_deploy.adapt.selection.records import read_selection

    sel = read_selection(json.loads((Path(run_dir) / "metrics.json").read_text()).get("selection")) or {}
    keep = ("stage", "iter", "scores", "miou", "collapse", "shares")  # shares: other collapse references replay
    brief = lambda p: None if p is None else {k: p.get(k) for k in keep}  # noqa: E731
    # the step files keep benchmark v3's names for the settings (their format is frozen; OLD_RECORD_NAMES)
    return {"criterion": sel.get("select_by"), "fallback_by": sel.get("fallback_by", sel.get("select_by")),
            "margin": sel.get("fallback_margin"), "fallback_enabled": sel.get("fallback"),
            "floor_by": sel.get("floor_by", []), "floor_tolerance": sel.get("floor_tolerance"),
            "floor_sticky": sel.get("floor_sticky"), "collapse_ref": sel.get("collapse_ref", "source"),
            "reference": brief(sel.get("reference")), "baseline": brief(sel.get("baseline")),
            "points": [brief(p) for p in sel.get("points", [])]}


# ---- orchestration ---------------------------------------------------------------------------------------
class State:
    """One JSON file per finished step under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / f"{name.replace('+', '_plus_')}.json"

    def get(self, name: str):
        p = self.path(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, name: str, value: dict) -> None:
        from sfda_deploy.runs import write_json

        write_json(self.path(name), value)


def _source_checkpoint(state: State, args) -> Path:
    """The trained source model: its run's file if still there, else the bundled copy with the same hash."""
    rec = state.get("source")
    if rec is None:
        return BUNDLED
    ckpt = Path(rec["checkpoint"])
    if ckpt.is_file():
        return ckpt
    if BUNDLED.is_file() and sha256(BUNDLED) == rec["sha256"]:
        return BUNDLED
    raise SystemExit(f"the source step's model {ckpt} is gone and the bundled model differs: "
                     f"delete {state.path('source')} to train it again")


def backfill_selection(state: State) -> int:
    """Steps saved before they carried their selection record get it from their run directory (if there)."""
    n = 0
    for path in sorted(state.root.glob("*.json")):
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "run_dir" in rec and "selection" not in rec \
                and (Path(rec["run_dir"]) / "metrics.json").is_file():
            rec["selection"] = selection_points(rec["run_dir"])
            state.put(path.stem.replace("_plus_", "+"), rec)
            n += 1
    return n


def _run_parallel(jobs: dict, workers: int, state: State) -> None:
    """Run ``{step: (fn, args)}`` in ``workers`` processes; each result is saved as it finishes."""
    if not jobs:
        return
    print(f"running {len(jobs)} step(s) with {workers} worker(s): {', '.join(jobs)}", flush=True)
    if workers <= 1:
        for name, (fn, fargs) in jobs.items():
            _finish(state, name, fn, fargs)
        return
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, *fargs): name for name, (fn, fargs) in jobs.items()}
        for fut in as_completed(futures):
            name = futures[fut]
            state.put(name, fut.result())
            print(f"[done] {name}", flush=True)


def _finish(state, name, fn, fargs):
    state.put(name, fn(*fargs))
    print(f"[done] {name}", flush=True)


STEPS = ("oracles", "source-only", "methods", "noise")


def plan(args, state: State, styles, source: Path) -> list[dict]:
    """Steps still to run among ``args.steps``, in dependency order (each phase a dict of independent steps)."""
    from sfda_deploy.data.synth_styles import CALIBRATED, STRUCTURED

    todo = {}
    if "source-only" in args.steps:
        done = state.get("source-only")
        if done is None:
            todo["source-only"] = (step_source_only, (args, source, styles))
        else:
            todo.update({f"source-only@{s}": (step_source_only_style, (args, source, s)) for s in styles
                         if s not in done and state.get(f"source-only@{s}") is None})
    if "oracles" in args.steps:
        todo.update({f"oracle@{s}": (step_oracle, (args, s)) for s in styles if state.get(f"oracle@{s}") is None})
    methods = {}
    trained = [m for m in args.methods if m != "adabn"]
    if "methods" in args.steps and trained and any(s in STRUCTURED for s in styles):
        check_frozen(state, [s for s in styles if s in STRUCTURED], args.data)
    if "noise" in args.steps and args.noise_style in STRUCTURED:
        check_frozen(state, [args.noise_style], args.data)
    if "methods" in args.steps:
        for s in styles:
            for m in args.methods:
                if m in VARIANTS and s not in CALIBRATED:
                    continue  # option variants are reported on the calibrated styles only
                if state.get(f"{s}@{m}") is None:
                    methods[f"{s}@{m}"] = (step_method, (args, source, s, m, args.seed))
    if "noise" in args.steps:
        for seed in args.noise_seeds:
            for m in args.noise_methods:
                name = f"noise@{args.noise_style}@{m}@seed{seed}"
                if state.get(name) is None:
                    methods[name] = (step_method, (args, source, args.noise_style, m, seed))
    return [todo, methods]


def parser() -> argparse.ArgumentParser:
    from sfda_deploy.data.synth_styles import CALIBRATED, STRESS, STRUCTURED

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--state", type=Path, default=DEFAULT_STATE,
                   help="folder of the step files (the docs' tables are written only from the default one)")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=300, help="compare budget: iterations per method in all")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, nargs=2, default=(128, 128))
    p.add_argument("--styles", default=",".join(CALIBRATED + STRESS + STRUCTURED))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--noise-style", default="real", help="style of the seed-noise runs")
    p.add_argument("--noise-methods", default="adabn,atp", help="methods re-run with --noise-seeds")
    p.add_argument("--noise-seeds", default="1,2", help="extra seeds that measure run-to-run spread")
    p.add_argument("--device", default="cpu", help="where the method runs train (cpu, cuda, cuda:N)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (default off: fp32, as on CPU)")
    p.add_argument("--select-by", default="im", help="the runs' selection criterion (pinned here, so that "
                   "every row of one re-base ships by one rule; the tables also re-apply the package default)")
    p.add_argument("--fallback-by", default="im", help="the criterion the runs' fallback compares the source on")
    p.add_argument("--fallback-to", default="better", choices=("better", "adabn"),
                   help="the runs' fallback home (pinned to the rule every earlier run shipped by: AdaBN where it "
                        "beats the source on --fallback-by, else the source)")
    p.add_argument("--baseline", default="adabn", choices=("adabn", "source"),
                   help="what the runs fall back to and set the floor by (the runs made before this option "
                        "had source)")
    p.add_argument("--workers", type=int, default=2, help="steps run side by side (one thread each)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"which kinds of step to run (of {','.join(STEPS)})")
    p.add_argument("--freeze", action="store_true", help="freeze the renderer for the structured styles (after "
                   "their training-free calibration steps) and exit")
    p.add_argument("--train-source", action="store_true",
                   help="train the source model with the bundled recipe (else: the bundled model)")
    return p


def main(argv=None) -> int:
    from sfda_deploy.data.synth_styles import CALIBRATED, STRESS, STRUCTURED

    p = parser()
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.noise_methods = [m for m in args.noise_methods.split(",") if m]
    args.noise_seeds = [int(s) for s in args.noise_seeds.split(",") if s]
    args.steps = [s for s in args.steps.split(",") if s]
    if set(args.steps) - set(STEPS):
        p.error(f"--steps takes some of {','.join(STEPS)}")
    styles = [s for s in args.styles.split(",") if s]
    state = State(args.state)
    if args.freeze:
        print(json.dumps(freeze(state, styles, args.data), indent=1))
        return 0
    t_start = time.perf_counter()
    from sfda_deploy.data.synth_styles import STYLES

    # A re-base of some styles adds to the styles the folder already reports (in the registry's order).
    before = (state.get("settings") or {}).get("styles", [])
    reported = [s for s in STYLES if s in set(before) | set(styles)]
    noise_style = args.noise_style if "noise" in args.steps else (state.get("settings") or {}).get(
        "noise_style", args.noise_style)
    state.put("settings", {"images": list(args.size), "train": args.train, "val": args.val, "seed": args.seed,
                           "budget_iters_per_method": args.iters, "batch": args.batch, "crop": list(args.crop),
                           "styles": reported, "calibrated": [s for s in reported if s in CALIBRATED],
                           "stress": [s for s in reported if s in STRESS],
                           "structured": [s for s in reported if s in STRUCTURED], "noise_style": noise_style,
                           "source_recipe": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in SOURCE_RECIPE.items()}})
    from sfda_deploy.data.synthetic import generate

    generate(args.data, STYLES, {"train": args.train, "val": args.val}, args.size, seed=args.seed)
    if args.train_source and state.get("source") is None:
        state.put("source", step_source(args))
    backfill_selection(state)
    source = _source_checkpoint(state, args)
    print(f"source model: {source}", flush=True)
    try:
        for phase in plan(args, state, styles, source):
            _run_parallel(phase, args.workers, state)
    finally:
        wall = state.get("wall") or {"seconds": 0.0}
        state.put("wall", {"seconds": round(wall["seconds"] + time.perf_counter() - t_start, 1)})
    if args.state.resolve() != DEFAULT_STATE.resolve():  # a side study: its own folder, the docs untouched
        print(f"steps in {args.state}; the docs' tables come from {DEFAULT_STATE} only", flush=True)
        return 0
    from scripts.benchmark_tables import write_docs

    write_docs(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
