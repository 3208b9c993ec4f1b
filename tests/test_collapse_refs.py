"""The collapse guard's reference (source, AdaBN, or where both agree), by hand, and its replay from recorded shares."""
from __future__ import annotations

import pytest
import torch

from sfda_deploy.adapt.selection.collapse import COLLAPSE_REFERENCES, collapse_against
from sfda_deploy.adapt.selection.records import recollapse, replay, replayable
from sfda_deploy.adapt.selection.settings import SelectionSpec

NAMES = ["road", "car", "sky", "truck"]
# the source calls 5 % of the pixels "truck" (a confident error); AdaBN only 1 %
SOURCE = [0.50, 0.30, 0.15, 0.05]
ADABN = [0.55, 0.30, 0.14, 0.01]


def _t(shares):
    return torch.tensor(shares, dtype=torch.float64)


def _judge(reference, model, source=SOURCE, adabn=ADABN):
    return collapse_against(reference, _t(source), _t(adabn), _t(model), names=NAMES)


def test_a_correction_of_the_source_is_a_collapse_only_against_the_source():
    fixed = [0.56, 0.30, 0.139, 0.001]  # truck 0.1 % < 0.1 × 5 % (source), but AdaBN's 1 % is under "present" (2 %)
    assert _judge("source", fixed) == "class truck vanished (5.0% of pixels at the source, 0.1% now)"
    assert _judge("adabn", fixed) is None
    assert _judge("agree", fixed) is None  # min(5 %, 1 %) = 1 % < 2 %: not present


def test_a_class_only_adabn_predicts():
    # sky: 1 % at the source (not present), 20 % with AdaBN; the model keeps 0.5 %
    source, adabn, model = [0.6, 0.39, 0.01, 0.0], [0.5, 0.3, 0.2, 0.0], [0.6, 0.395, 0.005, 0.0]
    assert _judge("source", model, source, adabn) is None  # road 60 % was 60 % at the source: no takeover
    assert _judge("adabn", model, source, adabn) == "class sky vanished (20.0% of pixels with AdaBN, 0.5% now)"
    assert _judge("agree", model, source, adabn) is None  # min(1 %, 20 %) = 1 %: not present


def test_takeover_against_each_reference():
    source, adabn, model = [0.65, 0.35, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.7, 0.3, 0.0, 0.0]
    assert _judge("source", model, source, adabn) is None  # the source already had road on 65 % ≥ 60 %
    assert _judge("adabn", model, source, adabn) == "class road took over (50.0% of pixels with AdaBN, 70.0% now)"
    assert _judge("agree", model, source, adabn) is None  # max(65 %, 50 %) ≥ 60 %: road was dominant already
    # neither had it: a takeover for every reference, the message names the greater share
    source, adabn = [0.55, 0.45, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]
    assert _judge("agree", model, source, adabn) == ("class road took over (55.0% of pixels at the source or AdaBN, "
                                                     "70.0% now)")


@pytest.mark.parametrize("reference", COLLAPSE_REFERENCES)
@pytest.mark.parametrize("only", [0, 3])
def test_a_destroyed_run_collapses_against_every_reference(reference, only):
    # one class predicted everywhere: road (others vanish) or truck (road vanishes)
    model = [1.0 if c == only else 0.0 for c in range(4)]
    verdict = _judge(reference, model)
    assert verdict is not None and verdict.startswith("class car vanished" if only == 0 else "class road vanished")


def test_bad_references():
    with pytest.raises(ValueError, match="needs AdaBN"):
        collapse_against("adabn", _t(SOURCE), None, _t(SOURCE))
    with pytest.raises(ValueError, match="unknown collapse reference"):
        collapse_against("adabm", _t(SOURCE), _t(ADABN), _t(SOURCE))
    assert collapse_against("source", _t(SOURCE), None, _t([0.0, 0.0, 0.0, 1.0])) is not None  # no AdaBN needed


def _point(stage, it, im, miou, shares, collapse=None):
    return {"stage": stage, "iter": it, "scores": {"im": im, "snd": 5.0}, "miou": miou, "shares": shares,
            "collapse": collapse}


def _record(with_shares=True):
    keep = (lambda s: s) if with_shares else (lambda s: None)
    ref = {**_point("source", 0, 1.0, 30.0, keep(SOURCE)), "collapse": None}
    points = [_point("A", 50, 1.3, 45.0, keep([0.52, 0.30, 0.15, 0.03])),
              _point("T", 50, 1.5, 48.0, keep([0.56, 0.30, 0.139, 0.001]), "class truck vanished")]
    return {"reference": ref, "points": points, "margin": 0.01, "fallback_enabled": True}


BASELINE = {**_point("adabn", 0, 1.2, 44.0, ADABN), "collapse": None}


@pytest.mark.parametrize("reference, ships", [("source", 45.0), ("adabn", 48.0), ("agree", 48.0)])
def test_replay_rejudges_each_point(reference, ships):
    record = _record()
    judged = recollapse(record, BASELINE, reference)
    assert [bool(p["collapse"]) for p in judged] == [False, reference == "source"]
    spec = SelectionSpec(collapse_ref=reference)
    assert replay(record, spec, BASELINE)["shipped"]["miou"] == ships
    assert record["points"][1]["collapse"] == "class truck vanished"  # the record itself is left as it was


def test_a_record_without_shares_replays_only_its_own_reference():
    old = _record(with_shares=False)
    assert replayable(old, BASELINE, "source") and not replayable(old, BASELINE, "adabn")
    assert replay(old, SelectionSpec(), BASELINE)["shipped"]["miou"] == 45.0  # its recorded verdicts
    with pytest.raises(ValueError, match="did not keep the predicted-class shares"):
        replay(old, SelectionSpec(collapse_ref="agree"), BASELINE)
    # a run judged against AdaBN in the loop: its verdicts stand for adabn; the baseline's shares are needed
    # only to judge it against another reference
    by_adabn = {**_record(), "collapse_ref": "adabn"}
    assert replayable(by_adabn, {**BASELINE, "shares": None}, "adabn")
    assert not replayable(by_adabn, {**BASELINE, "shares": None}, "agree")
    assert replayable(by_adabn, None, "source")
