"""Known answers, computed by hand from ATP's definitions (docs/methods.md), for ATP's losses and selection rules."""
from __future__ import annotations

import pytest
import torch

from sfda_deploy.adapt import losses as L
from sfda_deploy.adapt import mixing as M
from sfda_deploy.adapt import pseudo_labels as P


def _logits(rows):
    """[1,C,1,N] logits = log of N rows of C probabilities (so softmax gives the rows back)."""
    p = torch.tensor(rows, dtype=torch.float64)
    return p.log().t().reshape(1, len(rows[0]), 1, len(rows))


# ------------------------------------------------------------------ negative learning (ATP form)
def test_negative_learning_atp_threshold_mean_over_all_pixels():
    logits = _logits([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2]])
    # τ = .04: px0 negatives {1,2}, Σp = .03 → −ln .97 = .03045921; px1 none → −ln 1 = 0; mean .01522960
    assert float(L.negative_learning_loss(logits)) == pytest.approx(0.0152296037)
    # τ = .25: px1 negative {2} → −ln .8 = .22314355; (.03045921 + .22314355)/2 = .12680138
    assert float(L.negative_learning_loss(logits, 0.25)) == pytest.approx(0.1268013794)


def test_negative_learning_gradient_flows_through_the_negatives_probabilities():
    # p = [.97 .02 .01]: the loss −ln(1 − p1 − p2) moves the logits through p1 and p2 (a detached p, or a
    # loss on the positives, would give another gradient); the selection p < τ is a boolean mask, no grad
    z = _logits([[0.97, 0.02, 0.01]]).requires_grad_()
    L.negative_learning_loss(z).backward()
    # d/dz_c of −ln(p0) (since 1 − p1 − p2 = p0) = p_c − [c = 0] = [−.03, .02, .01]
    assert z.grad.flatten().tolist() == pytest.approx([-0.03, 0.02, 0.01])


def test_negative_learning_peer_form_unchanged():
    # one complementary class per pixel: px0 c̄ = 1 → −ln(1 − .3) = .35667494
    logits = _logits([[0.5, 0.3, 0.2]])
    comp = torch.tensor([[[1]]])
    assert float(L.negative_learning_loss(logits, complementary=comp)) == pytest.approx(0.35667494)


# ----------------------------------------------------------------------------------- stage A
def test_curriculum_entropy_known_answer():
    logits = _logits([[0.8, 0.2], [0.5, 0.5]])
    # px0: H = −(.8 ln .8 + .2 ln .2)/ln 2 = .5004024/.6931472 = .72192809
    #      (1 − H)^5 · H = .27807191^5 · .72192809 = .00166259 · .72192809 = .00120027
    # px1: H = 1 → (1 − 1)^5 · 1 = 0
    # L_cel = 1e-3 · (.00120027 + 0)/2 = 6.0013576e-7
    # w = exp(−3H): .11465997, .04978707; m = (w0·[.8 .2] + w1·[.5 .5]) / 2 = [.05831076 .02391276]
    # L_div = −(.05831076 ln .05831076 + .02391276 ln .02391276)/ln 2 = .36787554
    cel, div = L.curriculum_entropy_terms(logits)
    assert float(cel) == pytest.approx(6.0013576e-7, rel=1e-6)
    assert float(div) == pytest.approx(0.36787554, rel=1e-6)
    # total = 6.0013576e-7 − 1e-4 · .36787554 = −3.6187418e-5
    assert float(L.curriculum_entropy_loss(logits)) == pytest.approx(-3.6187418e-5, rel=1e-6)


def test_curriculum_weight_attached_raises_entropy_above_one_sixth():
    # f(H) = H(1 − H)^5 has f'(H) = (1 − H)^4 (1 − 6H) < 0 for H = .72 > 1/6: descent RAISES H
    # (the released behaviour); with the weight detached the gradient is (1 − H)^5 > 0: H falls.
    def entropy_after_step(detach):
        z = _logits([[0.8, 0.2]]).requires_grad_()
        cel, _ = L.curriculum_entropy_terms(z, detach_weight=detach)
        cel.backward()
        return float(L.normalized_entropy(z.detach() - 1e3 * z.grad))

    h0 = 0.72192809
    assert entropy_after_step(False) > h0
    assert entropy_after_step(True) < h0


# ----------------------------------------------------------------------------------- stage T / P CE
def test_pixel_cross_entropy_reductions():
    logits = _logits([[0.8, 0.2], [0.5, 0.5]])
    labels = torch.tensor([[[0, 255]]])
    # px0: −ln .8 = .22314355; px1 ignored → 0. all pixels: .22314355/2 = .11157178
    assert float(L.pixel_cross_entropy(logits, labels)) == pytest.approx(0.11157178)
    assert float(L.pixel_cross_entropy(logits, labels, over="labelled")) == pytest.approx(0.22314355)
    # batch weight q = .5: .11157178 · .5 = .05578589
    assert float(L.pixel_cross_entropy(logits, labels, 0.5)) == pytest.approx(0.05578589)


# ----------------------------------------------------------------------------------- stage P contrast
def test_prototype_contrastive_loss():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 255])
    # T = 1: each kept row has logits (1, 0) for its own class → CE = ln(1 + e^−1) = .31326169
    # reg: mean(f) = (.5, .5) → logits equal → Σ log softmax = 2 ln .5 = −1.38629436; /(2 ln 2) = −1
    assert float(L.prototype_contrastive_loss(feats, labels, protos, 1.0, 0.0)) == pytest.approx(0.31326169)
    assert float(L.prototype_contrastive_loss(feats, labels, protos, 1.0)) == pytest.approx(0.31326169 - 1)
    # T = 100: logits (.01, 0) → CE = ln(1 + e^−.01) = .68815968; reg still −1
    assert float(L.prototype_contrastive_loss(feats, labels, protos)) == pytest.approx(0.68815968 - 1)
    empty = L.prototype_contrastive_loss(feats.requires_grad_(), torch.full((3,), 255), protos)
    assert empty.item() == 0.0 and empty.requires_grad


def test_prototype_contrastive_loss_clean_form_cosine_over_temperature():
    # the clean option: prototypes L2-normalised, T = 0.1. Raw prototypes (2, 0) and (0, .5) → unit (1, 0), (0, 1)
    protos = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    feats = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 255])
    # unit: logits (.6, .8)/.1 = (6, 8) → CE = ln(1 + e^2) = 2.12692801
    clean = L.prototype_contrastive_loss(feats, labels, protos, 0.1, 0.0, unit_prototypes=True)
    assert float(clean) == pytest.approx(2.12692801)
    # raw means (the released form) at T = .1: logits (1.2, .4)/.1 = (12, 4) → CE = ln(1 + e^−8) = .00033541
    assert float(L.prototype_contrastive_loss(feats, labels, protos, 0.1, 0.0)) == pytest.approx(0.00033541, abs=1e-8)
    # reg: mean of the labelled rows = (.6, .8) → log softmax(6, 8) = (−2.12692801, −.12692801);
    # sum / (2 ln 2) = −1.62581345 → total .50111456
    with_reg = L.prototype_contrastive_loss(feats, labels, protos, 0.1, 1.0, unit_prototypes=True)
    assert float(with_reg) == pytest.approx(2.12692801 - 1.62581345)
    # a never-seen class (zero row) stays a zero logit: logits (6, 0) → CE = ln(1 + e^−6) = .00247569
    unseen = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert float(L.prototype_contrastive_loss(feats, labels, unseen, 0.1, 0.0, unit_prototypes=True)) == \
        pytest.approx(0.00247569, abs=1e-8)


# ----------------------------------------------------------------------------------- selection rules
def test_image_entropy_score():
    # px0 p = [.5 .5]: −p log₂ p / log₂ 2 = .5, .5; px1 p = [.8 .2]: .25754248, .46438562
    # mean of the four = 1.72192809/4 = .43048202
    assert float(P.image_entropy_scores(_logits([[0.5, 0.5], [0.8, 0.2]]))) == pytest.approx(0.43048202)


def test_entropy_rank_split():
    scores = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3, 0.6, 0.05])
    # ascending: 6 (.05), 1 (.1), 3 (.2), 4 (.3), 2 (.4), 0 (.5), 5 (.6); cut = int(7 · .3) = 2
    easy, hard = P.entropy_rank_split(scores)
    assert easy.tolist() == [6, 1] and hard.tolist() == [3, 4, 2, 0, 5]
    # N = 3: int(.9) = 0 easy images
    easy, hard = P.entropy_rank_split(torch.tensor([0.3, 0.1, 0.2]))
    assert easy.tolist() == [] and hard.tolist() == [1, 2, 0]


def test_confidence_weight_is_one_batch_scalar():
    # max p per pixel: .97, .968, .9, .5 → two are ≥ .968 → q = 2/4 = .5
    probs = _logits([[0.97, 0.03], [0.968, 0.032], [0.9, 0.1], [0.5, 0.5]]).exp()
    assert float(P.confidence_weight(probs)) == pytest.approx(0.5)


def test_border_weight_rows():
    w = P.border_weight(0.5, (1, 6, 2), top=1, bottom=2)
    # row 0 → 0 (top), rows 1-3 → q = .5, rows 4-5 → 0 (bottom)
    assert w[0, :, 0].tolist() == [0, 0.5, 0.5, 0.5, 0, 0]


def test_scaled_rows_keep_the_code_at_640_and_scale_elsewhere():
    assert (P.scaled_rows(15, 640, 640), P.scaled_rows(120, 640, 640)) == (15, 120)
    # 15·128/640 = 3.0 → 3; 120·128/640 = 24.0 → 24; 15·100/640 = 2.34 → 2; 120·100/640 = 18.75 → 19
    assert (P.scaled_rows(15, 128, 640), P.scaled_rows(120, 128, 640)) == (3, 24)
    assert (P.scaled_rows(15, 100, 640), P.scaled_rows(120, 100, 640)) == (2, 19)


def test_downscale_labels_majority_vote():
    lab = torch.tensor([[[0, 0, 1, 1],
                         [0, 1, 2, 2],
                         [2, 2, 255, 255],
                         [2, 255, 255, 0]]])
    # TL {0,0,0,1}: share .75 ≥ .75 → 0; TR {1,1,2,2}: .5 → 255;
    # BL {2,2,2,255}: .75 → 2; BR {255,255,255,0}: ignore wins with .75 → 255
    assert P.downscale_labels(lab, 2, num_classes=3).tolist() == [[[0, 255], [2, 255]]]
    # min ratio .8: TL (.75) and BL (.75) fall below → all 255
    assert P.downscale_labels(lab, 2, num_classes=3, min_ratio=0.8).tolist() == [[[255, 255], [255, 255]]]


def test_cumulative_prototypes():
    protos, counts = torch.tensor([[2.0], [0.0]]), torch.tensor([2.0, 0.0])
    feats, labels = torch.tensor([[4.0], [6.0], [10.0], [99.0]]), torch.tensor([0, 0, 1, 255])
    # class 0: n_new = 2, mean 5, w = 2/(2+2) = .5 → 2·.5 + 5·.5 = 3.5, n = 4
    # class 1: n_new = 1, mean 10, w = 1/(1+0) = 1 → 10, n = 1; the 255 row is skipped
    p, n = P.update_class_prototypes(protos, counts, feats, labels)
    assert p.flatten().tolist() == [3.5, 10.0] and n.tolist() == [4.0, 1.0]
    # a class absent from the batch keeps its prototype
    p2, n2 = P.update_class_prototypes(p, n, torch.tensor([[1.0]]), torch.tensor([1]))
    assert p2[0].item() == 3.5 and n2[0].item() == 4.0 and p2[1].item() == pytest.approx((10 + 1) / 2)


def test_prototypes_from_summed_per_process_statistics_equal_one_big_batch():
    # two processes see half the batch each; all-reducing (sum) their class sums/counts and merging once
    # gives the single-process update over the whole batch: what keeps DDP ranks' prototypes equal
    protos, counts = torch.tensor([[2.0], [0.0]]), torch.tensor([2.0, 0.0])
    feats, labels = torch.tensor([[4.0], [6.0], [10.0], [99.0]]), torch.tensor([0, 0, 1, 255])
    s1, n1 = P.class_feature_sums(feats[:2], labels[:2], 2)  # rank 0: class 0 sum 10, count 2
    s2, n2 = P.class_feature_sums(feats[2:], labels[2:], 2)  # rank 1: class 1 sum 10, count 1 (255 skipped)
    assert s1.flatten().tolist() == [10.0, 0.0] and n2.tolist() == [0.0, 1.0]
    p, n = P.merge_class_prototypes(protos, counts, s1 + s2, n1 + n2)
    assert p.flatten().tolist() == [3.5, 10.0] and n.tolist() == [4.0, 1.0]  # as test_cumulative_prototypes


# ----------------------------------------------------------------------------------- ClassMix (ATP)
def test_classmix_batch_classes_and_round_up():
    # image 0 holds classes {0, 1}, image 1 only {2}
    labels = torch.tensor([[[0, 1]], [[2, 2]]])
    g = torch.Generator().manual_seed(0)
    # LDBE default: per image ⌊n/2⌋ → image 1 (n = 1) pastes nothing
    assert not M.classmix_masks(labels, g)[1].any()
    # round up: ⌈1/2⌉ = 1 → image 1 pastes its only class
    assert M.classmix_masks(labels, g, round_up=True)[1].all()
    # ATP/DACS: classes from the whole batch {0,1,2}, ⌈3/2⌉ = 2 chosen: image 0 keeps 1 or 2 pixels,
    # and over seeds image 1 is sometimes all, sometimes nothing (class 2 drawn or not)
    seen = set()
    for s in range(20):
        m = M.classmix_masks(labels, torch.Generator().manual_seed(s), batch_classes=True, round_up=True)
        assert int(m[0].sum()) in (1, 2)
        seen.add(int(m[1].sum()))
    assert seen == {0, 2}


def test_paste_easy_onto_hard():
    mask = torch.tensor([[[True, False]]])
    easy, hard = torch.tensor([[[1, 1]]]), torch.tensor([[[7, 7]]])
    assert M.paste(mask, easy, hard).tolist() == [[[1, 7]]]
    img = M.paste(mask, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert img[0, :, 0].tolist() == [[1, 0]] * 3
