"""Known answers, computed by hand from the peer methods' definitions (docs/methods.md), for the peer methods' selection rules."""
from __future__ import annotations

import random

import pytest
import torch

from sfda_deploy.adapt import pseudo_labels as pl


def _probs2(p0):
    """Two-class probabilities [1,2,1,N] from the class-0 probabilities."""
    p0 = torch.tensor(p0, dtype=torch.float64)
    return torch.stack([p0, 1 - p0]).view(1, 2, 1, -1)


def _pixels(rows):
    """[1,C,1,N] from N rows of C probabilities."""
    return torch.tensor(rows, dtype=torch.float64).t().reshape(1, len(rows[0]), 1, len(rows))


# ----------------------------------------------------------------------------------- LDBE
def test_ldbe_subsample_sorts_per_class_and_keeps_every_fifth():
    # class-0 pixels: 0.9 .6 .7 .8 .55 .95 .65 → sorted .55 .6 .65 .7 .8 .9 .95 → [::5] = .55, .9
    # one class-1 pixel with p1 = 0.8 (p0 = 0.2) → [.8]
    probs = _probs2([0.9, 0.6, 0.7, 0.8, 0.55, 0.95, 0.65, 0.2])[0]
    pools = pl.ldbe_subsample_confidences(probs)
    assert pools[0].tolist() == pytest.approx([0.55, 0.9])
    assert pools[1].tolist() == pytest.approx([0.8])


def test_ldbe_class_threshold_index_rule_clamp_and_edge_case():
    a = torch.tensor([0.5, 0.1, 0.9, 0.3, 1.0, 0.2, 0.7, 0.4, 0.8, 0.6])  # N = 10
    # ρ = 0.25: ⌊10·0.25⌋ = 2 → a_sorted[-2] = 0.9
    assert float(pl.ldbe_class_threshold(a, 0.25)) == pytest.approx(0.9)
    # ρ = 0.10: ⌊1.0⌋ = 1 → a_sorted[-1] = 1.0 → clamped to 0.999999999
    assert float(pl.ldbe_class_threshold(a, 0.10)) == pytest.approx(0.999999999, abs=1e-12)
    # N = 5, ρ = 0.1: ⌊0.5⌋ = 0 → a[-0] = a[0], the MINIMUM (released code's edge case)
    assert float(pl.ldbe_class_threshold(torch.tensor([0.8, 0.6, 0.99, 0.7, 0.9]), 0.1)) == pytest.approx(0.6)
    # a class never predicted: +inf, never selected
    assert float(pl.ldbe_class_threshold(torch.tensor([]), 0.1)) == float("inf")
    assert pl.ldbe_class_thresholds([a, torch.tensor([])], 0.25).tolist()[0] == pytest.approx(0.9)


def test_ldbe_global_mask_any_class_vs_argmax_only():
    probs = _pixels([[0.5, 0.3, 0.2],    # 0.2 > τ2 = 0.1 only (not the argmax): any ✓, argmax ✗
                     [0.4, 0.52, 0.08],  # 0.52 > τ1 = 0.5 (argmax): ✓ ✓
                     [0.7, 0.2, 0.1],    # 0.7 > 0.6 ✓ ✓ (0.1 > 0.1 is false: strict)
                     [0.55, 0.36, 0.09]])  # nothing above: ✗ ✗
    tau = torch.tensor([0.6, 0.5, 0.1])
    assert pl.ldbe_global_mask(probs, tau).flatten().tolist() == [True, True, True, False]
    assert pl.ldbe_global_mask(probs, tau, argmax_only=True).flatten().tolist() == [False, True, True, False]


def test_ldbe_image_mask_strict_top_rho_and_zero_index_edge():
    # confidences 0.9, 0.8, 0.8 (class 1), 0.5 (tie, argmax 0); HW = 4
    probs = _probs2([0.9, 0.8, 0.2, 0.5])
    # ρ = 0.5: index ⌊2⌋ − 1 = 1 of [.9 .8 .8 .5] → t = 0.8; strict p > 0.8 keeps only 0.9
    assert pl.ldbe_image_mask(probs, 0.5).flatten().tolist() == [True, False, False, False]
    # ρ = 0.1: ⌊0.4⌋ − 1 = −1 → t = the smallest (0.5) → everything above it
    assert pl.ldbe_image_mask(probs, 0.1).flatten().tolist() == [True, True, True, False]


def test_ldbe_pseudo_labels_union_of_masks():
    probs = _probs2([0.9, 0.8, 0.2, 0.5])
    # τ = [.95 .95]: global mask empty; image mask (ρ = .5) keeps pixel 0 only
    assert pl.ldbe_pseudo_labels(probs, torch.tensor([0.95, 0.95]), 0.5).flatten().tolist() == [0, 255, 255, 255]
    # τ1 = 0.75: pixel 2 (p1 = 0.8 > 0.75) joins through the global mask, labelled 1
    assert pl.ldbe_pseudo_labels(probs, torch.tensor([0.95, 0.75]), 0.5).flatten().tolist() == [0, 255, 1, 255]


def test_ldbe_k_is_half_c_plus_minus_three():
    rng = random.Random(0)
    ks = {pl.ldbe_draw_k(19, rng) for _ in range(300)}
    assert ks == set(range(6, 13))  # ⌊19/2⌋ = 9, 9 ± 3


def test_kth_ranked_class():
    probs = _pixels([[0.15, 0.5, 0.3, 0.05]])  # ranking: 1 (.5), 2 (.3), 0 (.15), 3 (.05)
    assert [int(pl.kth_ranked_class(probs, k)) for k in (1, 2, 3, 4)] == [1, 2, 0, 3]


def test_random_other_class_never_the_label_and_uniform_over_the_rest():
    labels = torch.full((3000,), 2)
    other = pl.random_other_class(labels, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(other, minlength=4)
    assert counts[2] == 0
    assert all(900 < int(counts[c]) < 1100 for c in (0, 1, 3))  # ≈ 1000 each


def test_selective_masks_selnl_and_selpl():
    probs = _pixels([[0.6, 0.2, 0.1, 0.1],   # ŷ = 0, p = .6: NL (> 1/4) ✓, PL (> .5) ✓
                     [0.6, 0.2, 0.1, 0.1],   # ŷ = 1, p = .2: ✗ ✗
                     [0.3, 0.3, 0.2, 0.2],   # ŷ = 1, p = .3: ✓ ✗
                     [0.9, 0.05, 0.03, 0.02]])  # ŷ = 255: ✗ ✗
    nl, pos = pl.selective_masks(probs, torch.tensor([0, 1, 1, 255]).view(1, 1, 4))
    assert nl.flatten().tolist() == [True, False, True, False]
    assert pos.flatten().tolist() == [True, False, False, False]


# ------------------------------------------------------------------------------------ IAS
def test_ias_update_quantile_ema_and_absent_class():
    # α = .5, β = .9, γ = 8; θ = .9: q = 1 − .5·.9^8 = 1 − .5·.43046721 = .784766395
    # class 0: {.9} ∪ {.5 .7 .95 .99} sorted [.5 .7 .9 .95 .99]; pos = q·4 = 3.13906558
    #   ψ = .95 + .13906558·(.99 − .95) = .955562623; θ0 = .9·.9 + .1·ψ = .9055562623
    # class 1 absent: unchanged .9
    theta = pl.ias_update(torch.tensor([0.9, 0.9], dtype=torch.float64), torch.tensor([0.5, 0.7, 0.95, 0.99]),
                          torch.tensor([0, 0, 0, 0]), alpha=0.5, beta=0.9, gamma=8)
    assert theta.tolist() == pytest.approx([0.9055562623, 0.9], abs=1e-7)


def test_ias_update_caps_at_0999():
    # θ = 1 and confidences 1: ψ = 1, θ = 1 → reaches 1 → 0.999
    theta = pl.ias_update(torch.tensor([1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), 0.5, 0.9, 8)
    assert theta.tolist() == pytest.approx([0.999])


def test_ias_update_float16_option():
    # float32 .9001 = .90009999; float16 → .89990234375 (spacing 2^-11 near .9)
    # plain: sorted [.9 .9001]: ψ = .9 + .784766395·.0001 → θ = .81 + .1ψ = .90000785
    # half:  sorted [.89990234 .9]: ψ = .89990234 + .784766395·.00009766 → θ = .89999790
    args = (torch.tensor([0.9], dtype=torch.float64), torch.tensor([0.9001]), torch.tensor([0]), 0.5, 0.9, 8)
    assert float(pl.ias_update(*args)[0]) == pytest.approx(0.9000078471, abs=1e-9)
    assert float(pl.ias_update(*args, half_precision=True)[0]) == pytest.approx(0.8999978981, abs=1e-9)


def test_threshold_labels_keeps_at_or_above_class_threshold():
    probs = _probs2([0.6, 0.45, 0.3])  # (conf, ŷ): (.6,0) (.55,1) (.7,1)
    # θ = [.6 .8]: .6 ≥ .6 keep; .55 < .8 drop; .7 < .8 drop
    assert pl.threshold_labels(probs, torch.tensor([0.6, 0.8], dtype=torch.float64)).flatten().tolist() == [0, 255, 255]
    assert pl.threshold_labels(probs, torch.tensor([0.6, 0.5], dtype=torch.float64)).flatten().tolist() == [0, 1, 1]


# ----------------------------------------------------------------------------------- HPLA
def test_update_class_values_first_value_then_ema():
    # class 0 first seen (value 0): mean(.8, .6) = .7; class 1: .99·.5 + .01·.9 = .504; class 2 absent
    v = pl.update_class_values(torch.tensor([0.0, 0.5, 0.7]), torch.tensor([0.8, 0.6, 0.9, 0.3]),
                               torch.tensor([0, 0, 1, 255]))
    assert v.tolist() == pytest.approx([0.7, 0.504, 0.7])


def test_hard_classes_and_sampling_probabilities():
    values = torch.tensor([0.9, 0.2, 0.5, 0.1])
    hard = pl.hard_classes(values, 2)
    assert hard.tolist() == [3, 1]
    # (1 − .1)² = .81, (1 − .2)² = .64, total 1.45
    assert pl.hard_class_probs(values, hard).tolist() == pytest.approx([0, 0.64 / 1.45, 0, 0.81 / 1.45])


# ------------------------------------------------------------------------------------ CPSL
def test_rectify_soft_labels_flips_to_the_prototype_class():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # px0 f=[1,0], px1 f=[1,1]
    soft = _probs2([0.3, 0.4])  # soft argmax: 1, 1
    # px0: cos = [1, 0]/.08 → w ≈ [1 − 3.7e-6, 3.7e-6]; r ≈ [.3, 2.6e-6] → 0 (flipped)
    # px1: cos equal → w = [.5 .5]; r = soft/2 → 1, normalised confidence .6
    assert pl.rectify_soft_labels(soft, feats, protos).flatten().tolist() == [0, 1]
    assert pl.rectify_soft_labels(soft, feats, protos, threshold=0.65).flatten().tolist() == [0, 255]


def test_sinkhorn_one_iteration_by_hand():
    # scores = ε·ln(K) so exp(S/ε) = K = [[2,1],[1,1]] (rows: samples); Q = Kᵀ / 5
    eps = 0.05
    scores = eps * torch.log(torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    # π = [.5 .5]: rows of Q normalised: [2/3 1/3], [1/2 1/2]; ×π: [1/3 1/6], [1/4 1/4]
    #   columns: col0 sum 7/12 → [4/7 3/7]; col1 sum 5/12 → [2/5 3/5]; /2 then ×2
    q = pl.sinkhorn(scores, torch.tensor([0.5, 0.5]), epsilon=eps, iterations=1)
    assert q.tolist()[0] == pytest.approx([4 / 7, 3 / 7])
    assert q.tolist()[1] == pytest.approx([2 / 5, 3 / 5])
    # π = [.8 .2]: ×π: [8/15 4/15], [1/10 1/10]; col0 19/30 → [16/19 3/19]; col1 11/30 → [8/11 3/11]
    q = pl.sinkhorn(scores, torch.tensor([0.8, 0.2]), epsilon=eps, iterations=1)
    assert q.tolist()[0] == pytest.approx([16 / 19, 3 / 19])
    assert q.tolist()[1] == pytest.approx([8 / 11, 3 / 11])


def test_sinkhorn_stays_finite_for_scores_that_overflow_exp():
    scores = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 30  # exp(±600/.05) over/underflows
    q = pl.sinkhorn(scores, torch.tensor([0.6, 0.3, 0.1]))
    assert torch.isfinite(q).all()
    assert q.sum(dim=1).tolist() == pytest.approx([1.0] * 64, abs=1e-5)  # the last step normalises samples


def test_sinkhorn_class_mass_follows_the_prior():
    scores = torch.randn(256, 3, generator=torch.Generator().manual_seed(0)) * 0.05  # S/ε ~ N(0, 1)
    prior = torch.tensor([0.6, 0.3, 0.1])
    q = pl.sinkhorn(scores, prior)
    assert (q.sum(dim=0) / 256).tolist() == pytest.approx(prior.tolist(), abs=0.01)
    assert q.sum(dim=1).tolist() == pytest.approx([1.0] * 256, abs=1e-5)


def test_sinkhorn_zero_prior_class_gets_no_mass():
    # π = [1, 0] (a class the source model never predicts): after ×π the class-1 row is 0, each
    # column then normalises to [1, 0]; no NaN from log(0)
    eps = 0.05
    scores = eps * torch.log(torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    q = pl.sinkhorn(scores, torch.tensor([1.0, 0.0]), epsilon=eps, iterations=3)
    assert q.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_class_prior():
    assert pl.class_prior(torch.tensor([3, 1, 0])).tolist() == pytest.approx([0.75, 0.25, 0.0])


def test_prototype_update_running_mean_min_pixels_and_cap():
    labels = torch.tensor([0] * 10 + [1] * 2).view(1, 12)  # class 1 has 2 < 10 pixels: skipped
    f1 = torch.tensor([1.0, 2.0]).view(2, 1, 1).expand(2, 1, 12)
    protos, counts = pl.prototype_update(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), f1, labels)
    assert protos.tolist() == [[1.0, 2.0], [0.0, 0.0]] and counts.tolist() == [1, 0]
    # second image mean [3,4]: ([1,2]·1 + [3,4]) / 2 = [2,3]
    f2 = torch.tensor([3.0, 4.0]).view(2, 1, 1).expand(2, 1, 12)
    protos, counts = pl.prototype_update(protos, counts, f2, labels)
    assert protos.tolist() == [[2.0, 3.0], [0.0, 0.0]] and counts.tolist() == [2, 0]
    # count capped at 3000: (P·3000 + m)/3001 and the count stays 3000
    protos, counts = pl.prototype_update(torch.zeros(2, 2), torch.tensor([3000, 0]), f2, labels, max_count=3000)
    assert protos[0].tolist() == pytest.approx([3 / 3001, 4 / 3001]) and counts.tolist() == [3000, 0]
