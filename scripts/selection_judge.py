"""Judge pinned selection rules on step files no rule was chosen on (issue 26's held-out check).

    python -m scripts.selection_judge docs/benchmark_steps --only 'night-city@*_plus_P'
    python -m scripts.selection_judge docs/benchmark_steps --seed-noise --only 'noise@suburb@*'

The rules are pinned here, not read from the package default, so a later default does not change the judgement:
issue 26's rule (chosen on the dev runs before the held-out ones existed: docs/benchmark.md, "Selection on
benchmark v3") and issue 25's (the default when v3 began, ``benchmark_tables.held_out_spec``). Each is re-applied
to every matching run's scored checkpoints (``selection.records.replay``; the run's AdaBN point is its style's
``adabn`` step in the same directory, ``selection_grid.load_runs``). Printed: per run what each rule ships, the
best of (checkpoints by labels, AdaBN, source) and the regret; per rule median / worst / mean regret, runs below
the source, below AdaBN and below it by more than the seed noise.
"""
from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from scripts.benchmark_tables import held_out_spec
from scripts.selection_grid import SEED_NOISE, load_runs, outcome, summary
from sfda_deploy.adapt.selection.settings import SelectionSpec

ISSUE26_RULE = SelectionSpec(select_by="im+snd", fallback_by="im+snd", fallback_to="adabn", baseline="adabn",
                             fallback_margin=0.01, floor_by=("snd",), floor_tolerance=0.03, floor_sticky=True,
                             collapse_ref="source")


def pinned_rules() -> dict[str, SelectionSpec]:
    return {"issue 26 (im+snd)": ISSUE26_RULE, "issue 25 (im)": held_out_spec()}


def matching(runs: list[dict], patterns: list[str]) -> list[dict]:
    """The runs whose step name (``style@method``) matches one of ``patterns`` (shell globs); all without any."""
    return [r for r in runs if not patterns or any(fnmatch.fnmatchcase(r["name"], p) for p in patterns)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("state", nargs="+", type=Path, help="re-base step directories (with each style's adabn step)")
    p.add_argument("--only", action="append", default=[],
                   help="judge only the runs whose name matches this glob (e.g. 'night-city@*_plus_P'); repeatable")
    p.add_argument("--seed-noise", action="store_true", help="also the seed-noise runs (noise@STYLE@METHOD@seedN)")
    args = p.parse_args(argv)
    runs = matching(load_runs(args.state, seed_noise=args.seed_noise), args.only)
    if not runs:
        print("no method run with an AdaBN point on its sample matches")
        return 1
    rules = pinned_rules()
    print(f"{len(runs)} runs; regret = best of (checkpoints by labels, AdaBN, source) − shipped")
    for r in runs:
        cells = [outcome(r, spec) for spec in rules.values()]
        shown = "  ".join(f"{name}: {o['ships']} {o['shipped']:.2f} (regret {o['regret']:.2f})"
                          for name, o in zip(rules, cells))
        print(f"{cells[0]['run']:<44} AdaBN {cells[0]['adabn']:.2f}  {shown}")
    for name, spec in rules.items():
        m = summary(runs, spec)
        print(f"{name}: median {m['median']:.2f}, worst {m['worst']:.2f} ({m['worst_run']}), mean {m['mean']:.2f}, "
              f"below source {m['below_source']}, below AdaBN {m['below_adabn']} ({m['below_noise']} by more than "
              f"{SEED_NOISE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
