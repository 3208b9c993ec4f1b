"""Label-free scores, collapse detector and selection rule: known answers computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from sfda_deploy.adapt.selection.collapse import CollapseRule, collapse
from sfda_deploy.adapt.selection.rule import beats, best_point, decide, floor_candidates, keeps_floor
from sfda_deploy.adapt.selection.scores import class_marginal, class_shares, im_score, marginal_kl, mix_score, snd_score
from sfda_deploy.adapt.selection.settings import SelectionSpec


def _h(*p):
    """Entropy (nats) of a distribution written out by hand."""
    return -sum(x * math.log(x) for x in p if x > 0)


def test_im_score_known_values():
    # two pixels, two classes: p1 = (1/2, 1/2), p2 = softmax(ln 3, 0) = (3/4, 1/4)
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], dtype=torch.float64)  # [1, 2, 1, 2]
    expected = _h(5 / 8, 3 / 8) - (_h(1 / 2, 1 / 2) + _h(3 / 4, 1 / 4)) / 2
    assert im_score(logits) == pytest.approx(expected, abs=1e-12)
    # confident and diverse (one-hot on different classes): H(mean) = ln 2, mean H = 0
    sharp = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
    assert im_score(sharp) == pytest.approx(math.log(2), abs=1e-12)
    # confident on one class everywhere, or uniform everywhere: 0
    assert im_score(torch.tensor([[[[50.0, 50.0]], [[-50.0, -50.0]]]])) == pytest.approx(0.0, abs=1e-12)
    assert im_score(torch.zeros(2, 3, 4, 4)) == pytest.approx(0.0, abs=1e-12)


def test_snd_score_known_values():
    # f1 = f2 = (1, 0), f3 = (0, 5) (normalised to (0, 1)); T = 1: S = [[1,1,0],[1,1,0],[0,0,1]]
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    a = math.e / (math.e + 1)  # row 1 over (f2, f3): softmax(1, 0)
    expected = (2 * _h(a, 1 - a) + math.log(2)) / 3  # row 3 over (f1, f2): softmax(0, 0) = uniform
    assert snd_score(f, temperature=1.0) == pytest.approx(expected, abs=1e-12)
    b = math.e ** 2 / (math.e ** 2 + 1)  # T = 0.5 doubles the similarities: softmax(2, 0)
    assert snd_score(f, temperature=0.5) == pytest.approx((2 * _h(b, 1 - b) + math.log(2)) / 3, abs=1e-12)
    # four equal rows: every row's neighbours are 3 ties → ln 3 whatever the temperature
    assert snd_score(torch.ones(4, 3)) == pytest.approx(math.log(3), abs=1e-12)
    with pytest.raises(ValueError):
        snd_score(torch.ones(1, 3))


def test_mix_score_counts_only_the_pixels_a_and_b_tell_apart():
    a = torch.tensor([[0, 1], [2, 2]])
    b = torch.tensor([[0, 2], [1, 2]])
    mixed = torch.tensor([[5, 1], [1, 2]])  # differing pixels (0,1): 1 == a ✓, (1,0): 1 ≠ 2 ✗
    assert mix_score(mixed, a, b) == 0.5
    assert mix_score(a, a, b) == 1.0
    assert mix_score(a, a, a.clone()) == 0.0  # no pixel told apart: no evidence


def test_marginals_shares_and_kl():
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], dtype=torch.float64)
    assert class_marginal(logits).tolist() == pytest.approx([5 / 8, 3 / 8])
    assert class_shares(torch.tensor([[0, 0, 2, 1]]), 4).tolist() == [0.5, 0.25, 0.25, 0.0]
    m, r = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    assert marginal_kl(m, r) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-9)
    assert marginal_kl(r, r) == pytest.approx(0.0, abs=1e-9)


def test_collapse_detector():
    src = torch.tensor([0.5, 0.3, 0.2, 0.0])
    names = ["road", "car", "sky", "bus"]
    # sky falls from 20 % to 1 % (< 0.1 × 20 %): vanished
    assert "class sky vanished (20.0% of pixels at the source, 1.0% now)" == collapse(
        src, torch.tensor([0.5, 0.49, 0.01, 0.0]), names=names)
    # road grows to 70 % (≥ 60 %, source 50 %): took over
    assert collapse(src, torch.tensor([0.7, 0.2, 0.1, 0.0])).startswith("class 0 took over")
    # ordinary shifts: none
    assert collapse(src, torch.tensor([0.55, 0.3, 0.15, 0.0])) is None
    assert collapse(src, torch.tensor([0.5, 0.3, 0.03, 0.17])) is None  # 3 % ≥ 0.1 × 20 %
    # the source already predicted road on 70 %: growing to 80 % is no take-over
    assert collapse(torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.8, 0.1, 0.1])) is None
    # a class the source barely predicts (1 % < present) may vanish
    assert collapse(torch.tensor([0.59, 0.4, 0.01]), torch.tensor([0.59, 0.41, 0.0])) is None
    assert collapse(torch.tensor([0.5, 0.5]), torch.tensor([0.55, 0.45]), CollapseRule(takeover=0.55)) is not None


def _pt(stage, it, im, collapse=None):
    return {"stage": stage, "iter": it, "scores": {"im": im}, "collapse": collapse}


def test_beats_is_a_relative_margin():
    assert beats(1.02, 1.0, 0.01) and not beats(1.01, 1.0, 0.01) and not beats(1.0, 1.0, 0.0)
    assert beats(-0.98, -1.0, 0.01) and not beats(-0.995, -1.0, 0.01)  # |reference| for negative scores


def test_best_point_skips_collapsed_and_keeps_the_earliest_tie():
    pts = [_pt("A", 10, 0.5), _pt("A", 20, 0.9, "x"), _pt("T", 10, 0.7), _pt("T", 20, 0.7)]
    assert best_point(pts, "im") is pts[2]
    assert best_point(pts, "im", skip_collapsed=False) is pts[1]
    assert best_point([], "im") is None


def _decide(points, reference, criterion, margin, baseline=None, **rule):
    """``decide`` with a rule of ``criterion`` and ``margin``, no fallback_by and no floor unless given."""
    rule = {"fallback_by": None, "floor_by": (), "floor_tolerance": 0.0, **rule}
    return decide(points, reference, SelectionSpec(select_by=criterion, fallback_margin=margin, **rule), baseline)


def test_decide_ships_the_best_or_falls_back():
    ref = _pt("source", 0, 1.0)
    good = [_pt("A", 10, 1.1), _pt("A", 20, 1.3), _pt("T", 10, 1.2)]
    d = _decide(good, ref, "im", 0.01)
    assert d["shipped"] is good[1] and d["selected"] is good[1] and not d["fell_back"] and d["reason"] is None
    # best 1.005 does not beat 1.0 by 1 %: the source is shipped
    d = _decide([_pt("A", 10, 1.005)], ref, "im", 0.01)
    assert d["shipped"] is ref and d["fell_back"] and "does not beat the source's 1.0000 by 1%" in d["reason"]
    # the top point collapsed: the best one without collapse is shipped (a fallback to an earlier point)
    pts = [_pt("A", 10, 1.2), _pt("T", 10, 1.5, "class sky vanished")]
    d = _decide(pts, ref, "im", 0.01)
    assert d["selected"] is pts[1] and d["shipped"] is pts[0] and d["fell_back"] and "collapsed" in d["reason"]
    # everything collapsed: the source
    d = _decide([_pt("A", 10, 2.0, "class sky vanished")], ref, "im", 0.01)
    assert d["shipped"] is ref and "every scored checkpoint collapsed (class sky vanished)" == d["reason"]
    # --no-fallback: the criterion's top, collapsed or not
    d = _decide(pts, ref, "im", 0.01, fallback=False)
    assert d["shipped"] is pts[1] and not d["fell_back"]
    # no reference (nothing to fall back to): the best
    assert _decide(good, None, "im", 0.01)["shipped"] is good[1]


def test_decide_guard_judges_the_fallback_by_another_criterion():
    # SND picks; the source has the higher SND (3.0) but the lower IM (1.5)
    pts = [{"stage": "A", "iter": 1, "scores": {"im": 2.0, "snd": 1.0}, "collapse": None},
           {"stage": "A", "iter": 2, "scores": {"im": 1.6, "snd": 2.0}, "collapse": None}]
    ref = {"stage": "source", "iter": 0, "scores": {"im": 1.5, "snd": 3.0}, "collapse": None}
    d = _decide(pts, ref, "snd", 0.01)  # 2.0 < 3.0 · 1.01: the source
    assert d["shipped"] is ref and d["fell_back"] and "snd score 2.0000" in d["reason"]
    d = _decide(pts, ref, "snd", 0.01, fallback_by="im")  # SND's pick A/2 has im 1.6 ≥ 1.5 · 1.01 = 1.515: it ships
    assert d["shipped"] is pts[1] and d["selected"] is pts[1] and not d["fell_back"]
    d = _decide(pts, ref, "snd", 0.1, fallback_by="im")  # 1.6 < 1.5 · 1.1 = 1.65: the source, the reason names both
    assert d["shipped"] is ref and "im score 1.6000 of the best checkpoint (picked by snd)" in d["reason"]


def _p2(stage, it, im, snd, collapse=None):
    return {"stage": stage, "iter": it, "scores": {"im": im, "snd": snd}, "collapse": collapse}


def test_keeps_floor_is_relative_to_the_baseline():
    base = _p2("adabn", 0, 1.2, 5.0)  # snd floor at 3 %: 5.0 − 0.15 = 4.85
    assert keeps_floor(_p2("A", 1, 9.0, 4.85), base, ("snd",), 0.03)
    assert not keeps_floor(_p2("A", 1, 9.0, 4.84), base, ("snd",), 0.03)
    assert keeps_floor(_p2("A", 1, 9.0, 4.84), base, (), 0.03)          # no floor
    assert keeps_floor(_p2("A", 1, 9.0, 0.0), None, ("snd",), 0.03)     # no baseline: no floor
    assert not keeps_floor(_p2("A", 1, 1.1, 4.9), base, ("snd", "im"), 0.05)  # im floor 1.2 − 0.06 = 1.14


def test_decide_with_the_adabn_baseline_and_the_snd_floor():
    ref, base = _p2("source", 0, 1.0, 5.2), _p2("adabn", 0, 1.2, 5.0)
    rule = dict(baseline=base, floor_by=("snd",), floor_tolerance=0.03, floor_sticky=False)
    # A/1 has the top IM (2.0) but snd 4.0 < 4.85; T/1 (im 1.4, snd 4.9) keeps the floor and beats 1.2 · 1.01
    pts = [_p2("A", 1, 2.0, 4.0), _p2("T", 1, 1.4, 4.9), _p2("T", 2, 1.3, 5.1)]
    d = _decide(pts, ref, "im", 0.01, **rule)
    assert d["selected"] is pts[0] and d["shipped"] is pts[1] and d["fell_back"]
    assert d["reason"] == ("the top-scored checkpoint (A iteration 1) fell more than 3% below the AdaBN baseline's "
                           "snd; shipped the best one that did not")
    # sticky (the default): A/1 broke the floor first, so T/1 and T/2 are out too → AdaBN
    d = _decide(pts, ref, "im", 0.01, baseline=base, floor_by=("snd",), floor_tolerance=0.03)
    assert d["shipped"] is base and d["fell_back"]
    assert d["reason"] == "the first scored checkpoint already fell more than 3% below the AdaBN baseline's snd"
    # sticky, the breach later: the points before it are candidates, T/1 (1.4) ships over T/2's 2.0
    late = [_p2("A", 1, 1.3, 5.0), _p2("T", 1, 1.4, 4.9), _p2("T", 2, 2.0, 4.0), _p2("P", 1, 2.5, 5.0)]
    d = _decide(late, ref, "im", 0.01, baseline=base, floor_by=("snd",), floor_tolerance=0.03)
    assert d["shipped"] is late[1] and d["selected"] is late[3] and d["fell_back"]
    assert d["reason"].endswith("below the AdaBN baseline's snd, or came after a checkpoint that did; shipped the best "
                                "one that did not")
    assert floor_candidates(late, base, ("snd",), 0.03) == late[:2]
    assert floor_candidates(late, base, ("snd",), 0.03, sticky=False) == [late[0], late[1], late[3]]
    # the kept point must beat AdaBN (not only the source): 1.21 < 1.2 · 1.01 = 1.212 → AdaBN ships
    d = _decide([_p2("T", 1, 1.21, 5.0)], ref, "im", 0.01, **rule)
    assert d["shipped"] is base and d["fell_back"]
    assert d["reason"] == ("the im score 1.2100 of the best checkpoint (T iteration 1) does not beat the AdaBN "
                           "baseline's 1.2000 by 1%")
    # nothing keeps the floor → AdaBN
    d = _decide([_p2("A", 1, 2.0, 4.0)], ref, "im", 0.01, **rule)
    assert d["shipped"] is base
    assert d["reason"] == "every scored checkpoint fell more than 3% below the AdaBN baseline's snd"
    # --fallback-to better: AdaBN does not beat the source on IM (1.005 < 1.01) → the source is the fallback
    weak = _p2("adabn", 0, 1.005, 5.0)
    d = _decide([_p2("A", 1, 2.0, 4.0)], ref, "im", 0.01, baseline=weak, floor_by=("snd",), floor_tolerance=0.03,
                fallback_to="better")
    assert d["shipped"] is ref
    # --fallback-to adabn (the default): AdaBN all the same
    d = _decide([_p2("A", 1, 2.0, 4.0)], ref, "im", 0.01, baseline=weak, floor_by=("snd",), floor_tolerance=0.03)
    assert d["shipped"] is weak
    # a collapsed AdaBN is never the fallback, whatever --fallback-to says
    for home in ("better", "adabn"):
        d = _decide([_p2("A", 1, 2.0, 4.0)], ref, "im", 0.01, baseline=_p2("adabn", 0, 1.5, 5.0, "class 3 vanished"),
                    floor_by=("snd",), floor_tolerance=0.03, fallback_to=home)
        assert d["shipped"] is ref
    # a clean win ships without fallback; --no-fallback ignores the floor
    d = _decide(pts[1:], ref, "im", 0.01, **rule)
    assert d["shipped"] is pts[1] and not d["fell_back"] and d["reason"] is None
    assert _decide(pts, ref, "im", 0.01, fallback=False, **rule)["shipped"] is pts[0]


def test_the_selection_settings_are_declared_once_and_checked_in_one_place():
    from dataclasses import fields

    from sfda_deploy.adapt.selection.settings import spec_of
    from sfda_deploy.commands.compare import _adapt_config
    from sfda_deploy.config import AdaptConfig, CompareConfig, SelectionSettings
    from sfda_deploy.errors import SfdaError

    assert issubclass(AdaptConfig, SelectionSettings) and issubclass(CompareConfig, SelectionSettings)
    cfg = CompareConfig(select_by="snd", fallback_by=None, floor_by="none", floor_sticky=False, stage_keep="best",
                        collapse_ref="agree", select_images=4, fallback_margin=0.05)
    assert len(cfg.selection_values()) == len(fields(SelectionSettings)) == 13
    assert _adapt_config(cfg, "atp").selection_values() == cfg.selection_values()  # compare → each method's adapt
    spec = spec_of(cfg)
    assert (spec.select_by, spec.fallback_by, spec.floor_by, spec.floor_sticky) == ("snd", None, (), False)
    assert spec.stage_keep == "best"
    assert spec.fallback_margin == 0.05 and spec.select_images == 4 and spec.collapse_ref == "agree"
    # a config built in code (not through build_config) is checked by the same table
    for bad, message in (({"select_by": "imm"}, "unknown --select-by 'imm'"),
                         ({"floor_tolerance": 1.0}, "--floor-tolerance 1.0 is not allowed"),
                         ({"collapse_ref": "adabn", "baseline": "source"}, "--collapse-ref adabn judges")):
        with pytest.raises(SfdaError, match=message):
            spec_of(AdaptConfig(**bad))


def test_one_name_per_selection_setting_from_flag_to_record():
    from dataclasses import fields

    import click

    from sfda_deploy.adapt.selection.settings import SelectionSpec
    from sfda_deploy.cli import cli
    from sfda_deploy.config import SelectionSettings

    names = [f.name for f in fields(SelectionSettings)]
    assert set(names) <= {f.name for f in fields(SelectionSpec)}
    for command in ("adapt", "compare"):
        flags = {p.name for p in cli.commands[command].params if isinstance(p, click.Option)}
        assert set(names) <= flags, set(names) - flags


def test_read_selection_translates_the_old_names_only():
    from sfda_deploy.adapt.selection.records import read_selection

    # metrics.json["selection"] as runs wrote it before the rename (benchmark v3's step files keep it so)
    old = {"criterion": "im", "criteria": ["im"], "every": None, "images": 16, "margin": 0.01, "fallback_enabled": True,
           "fallback_by": "im", "fallback": False, "reason": None, "points": [],
           "handed_on": [{"stage": "T", "kept": "end", "criterion": "im"}]}
    new = read_selection(old)
    assert new == {"select_by": "im", "criteria": ["im"], "select_every": None, "select_images": 16,
                   "fallback_margin": 0.01, "fallback": True, "fallback_by": "im", "fell_back": False, "reason": None,
                   "points": [], "handed_on": [{"stage": "T", "kept": "end", "select_by": "im"}]}
    assert read_selection(new) is new  # today's record as it is
    step = {"margin": 0.05, "fallback_enabled": False, "points": []}  # a step file's block without a criterion
    assert read_selection(step) == {"fallback_margin": 0.05, "fallback": False, "points": []}
    assert read_selection(None) is None and read_selection({}) == {}
