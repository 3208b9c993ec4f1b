"""Composite selection criteria (``selection.criteria``) and the rule that ranks and judges by them, by hand."""
from __future__ import annotations

import pytest

from sfda_deploy.adapt.selection.criteria import anchor_of, is_composite, parts, value
from sfda_deploy.adapt.selection.rule import beats, best_point, decide
from sfda_deploy.adapt.selection.settings import SelectionSpec


def _p(stage, it, im, snd, mix=0.4, collapse=None):
    return {"stage": stage, "iter": it, "scores": {"im": im, "snd": snd, "mix": mix}, "collapse": collapse}


ADABN = _p("adabn", 0, 2.0, 4.0, 0.5)
SOURCE = _p("source", 0, 1.5, 4.4, 0.5)


def test_a_composite_is_the_mean_relative_gain_over_the_anchor():
    assert parts("im+snd+mix") == ("im", "snd", "mix") and is_composite("im+snd") and not is_composite("snd")
    point = _p("T", 1, 2.2, 3.9, 0.6)
    assert value(point, "snd", None) == 3.9                                        # a recorded score as it is
    assert value(point, "im+snd", ADABN) == pytest.approx((0.2 / 2.0 - 0.1 / 4.0) / 2)    # (10 % − 2.5 %) / 2
    assert value(point, "im+snd+mix", ADABN) == pytest.approx((0.1 - 0.025 + 0.2) / 3)   # mix 0.6 vs 0.5: +20 %
    assert value(ADABN, "im+mix", ADABN) == 0.0
    with pytest.raises(ValueError, match="needs an anchor"):
        value(point, "im+snd", None)
    with pytest.raises(ValueError, match="scores 0 on mix"):
        value(point, "im+mix", _p("adabn", 0, 2.0, 4.0, 0.0))


def test_a_composite_margin_is_absolute():
    # a single score must beat the reference by 1 % of it; a composite (already a share) by 0.01
    assert beats(0.205, 0.2, 0.01, "im") and not beats(0.205, 0.2, 0.01, "im+snd")
    assert beats(0.2101, 0.2, 0.01, "im+snd") and not beats(0.0099, 0.0, 0.01, "im+snd")


def test_im_and_snd_together_ship_what_im_alone_refuses():
    # X raises IM by 1 % and keeps SND (composite 0.005); Y loses 5 % IM and gains 10 % SND (composite 0.025)
    x, y = _p("BE", 100, 2.02, 4.0), _p("P", 50, 1.9, 4.4)
    by_im = decide([x, y], SOURCE, SelectionSpec(select_by="im", fallback_by="im"), ADABN)
    assert by_im["selected"] is x and by_im["shipped"] is ADABN   # 2.02 is not above 2.0 · 1.01 = 2.02
    assert by_im["reason"].startswith("the im score 2.0200 of the best checkpoint (BE iteration 100) does not beat")
    d = decide([x, y], SOURCE, SelectionSpec(select_by="im+snd", fallback_by="im+snd"), ADABN)
    assert d["selected"] is y and d["shipped"] is y and not d["fell_back"]  # 0.025 > 0 + 0.01
    assert best_point([x, y], "im+snd", anchor=ADABN) is y
    # judged by the composite against AdaBN's 0: Y at 1.98 / 4.04 gains (−1 % + 1 %) / 2 = 0 → AdaBN ships
    flat = _p("P", 50, 1.98, 4.04)
    d = decide([flat], SOURCE, SelectionSpec(select_by="im+snd", fallback_by="im+snd"), ADABN)
    assert d["shipped"] is ADABN and d["reason"].startswith("the im+snd score 0.0000 of the best checkpoint")


def test_the_fallback_home_under_a_composite_judge():
    # the source gains 10 % SND and 0 % on mix over AdaBN: on snd+mix it scores (10 % + 0) / 2 = 0.05 > 0.01
    y = _p("P", 50, 1.9, 4.0)                        # snd+mix: 0 → does not beat either home
    better = SelectionSpec(select_by="snd+mix", fallback_to="better", fallback_by=None)
    assert decide([y], SOURCE, better, ADABN)["shipped"] is SOURCE
    assert decide([y], SOURCE, SelectionSpec(select_by="snd+mix", fallback_by=None), ADABN)["shipped"] is ADABN


def test_without_a_baseline_a_composite_is_measured_against_the_source():
    # no AdaBN point: gains over the source (im 1.5, snd 4.4); Z: (+20 % − 10 %) / 2 = 0.05 ships, W: 0.005 does not
    z, w = _p("T", 1, 1.8, 3.96), _p("T", 2, 1.515, 4.4)
    spec = SelectionSpec(select_by="im+snd", fallback_by="im+snd", baseline="source", floor_by=())
    assert decide([z, w], SOURCE, spec)["shipped"] is z
    assert decide([w], SOURCE, spec)["shipped"] is SOURCE


def test_a_destroyed_run_falls_back_under_the_default():
    # every criterion falls (IM −50 %, SND −20 %): the default rule ships AdaBN; a collapsed top point never ships
    wrecked = [_p("A", 2, 1.0, 3.2), _p("A", 4, 0.8, 3.0, collapse="class road took over")]
    d = decide(wrecked, SOURCE, SelectionSpec(), ADABN)
    assert d["shipped"] is ADABN and d["fell_back"]
    # a collapsed point that scores high on both is passed over, the floor bars the rest → AdaBN
    fake = [_p("A", 2, 2.6, 4.4, collapse="class road took over"), _p("A", 4, 1.0, 3.2)]
    d = decide(fake, SOURCE, SelectionSpec(), ADABN)
    assert d["selected"] is fake[0] and d["shipped"] is ADABN


def test_without_anything_to_fall_back_to_a_composite_ranks_against_the_first_point():
    # no baseline, no reference (a black-box source before its distilled reference): gains over T/1 (im 1.0, snd 4.0)
    first, up, down = _p("T", 1, 1.0, 4.0), _p("T", 2, 1.1, 3.8), _p("T", 3, 0.95, 4.4)
    assert anchor_of(None, None, [first, up, down]) is first and anchor_of(None, None, []) is None
    # up: (+10 % − 5 %) / 2 = 0.025; down: (−5 % + 10 %) / 2 = 0.025 too, later → the earlier ships
    assert best_point([first, up, down], "im+snd", anchor=first) is up
    d = decide([first, up, _p("T", 4, 1.2, 4.0)], None, SelectionSpec())
    assert d["shipped"]["iter"] == 4 and not d["fell_back"]  # (+20 % + 0) / 2 = 0.1
