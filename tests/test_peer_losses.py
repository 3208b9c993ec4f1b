"""Known answers, computed by hand from the definitions in docs/methods.md, for the peer methods' losses and mixing."""
from __future__ import annotations

import pytest
import torch

from sfda_deploy.adapt import losses as L
from sfda_deploy.adapt import mixing as M
from sfda_deploy.adapt.losses import negative as N


def _logits(rows):
    """[1,C,1,N] logits = log of N rows of C probabilities (so softmax gives the rows back)."""
    p = torch.tensor(rows, dtype=torch.float64)
    return p.log().t().reshape(1, len(rows[0]), 1, len(rows))


def _lab(values):
    return torch.tensor(values).view(1, 1, -1)


def test_max_squares_plain():
    # p = [.8 .2]: Σp² = .68 over 2 entries → mean .34 → −.34/2 = −.17
    assert float(L.max_squares_loss(_logits([[0.8, 0.2]]))) == pytest.approx(-0.17)


def test_max_squares_image_weighted():
    # argmax counts n0 = 3, n1 = 1, N = 4: w0 = 1/(3^.2·4^.8) = .26480596, w1 = 1/4^.8 = .32987698
    # Σp² per pixel: .68 .52 .58 (class 0), .82 (class 1)
    # L = −(w0·1.78 + w1·.82)/(B·C = 2) = −.37092687
    logits = _logits([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert float(L.max_squares_loss(logits, image_weighted=True)) == pytest.approx(-0.37092687)


def test_max_squares_weight_floor_of_one():
    # a single pixel: n0 = 1, N = 1 → 1^.2·1^.8 = 1 → w = 1; −(.68)/(1·2) = −.34
    assert float(L.max_squares_loss(_logits([[0.8, 0.2]]), image_weighted=True)) == pytest.approx(-0.34)


def test_negative_learning_clamp_and_mask():
    logits = torch.cat([_logits([[0.5, 0.3, 0.2]]), torch.tensor([100.0, 0, 0], dtype=torch.float64).view(1, 3, 1, 1)], 3)
    comp = _lab([1, 0])
    # px0: −ln(1 − .3) = .35667494; px1: p_c̄ ≈ 1 → clamp 1e-5 → −ln 1e-5 = 11.51292546
    assert float(N.negative_learning_loss(logits, complementary=comp)) == pytest.approx((0.35667494 + 11.51292546) / 2)
    assert float(N.negative_learning_loss(logits, complementary=comp, mask=_lab([True, False]))) == pytest.approx(0.35667494)
    empty = N.negative_learning_loss(logits.requires_grad_(), complementary=comp, mask=_lab([False, False]))
    assert empty.item() == 0.0 and empty.requires_grad


def test_ldbe_entropy_double_softmax_quirk_and_shannon():
    # p = [.8 .2]; softmax(p) = [.6456563 .3543437]
    # double: −(.8·ln .6456563 + .2·ln .3543437) = .8·.4374879 + .2·1.0374879 = .5574879
    # Shannon: −(.8 ln .8 + .2 ln .2) = .1785148 + .3218876 = .5004024
    logits = _logits([[0.8, 0.2]])
    assert float(L.ldbe_entropy_loss(logits)) == pytest.approx(0.5574879, abs=1e-6)
    assert float(L.ldbe_entropy_loss(logits, double_softmax=False)) == pytest.approx(0.5004024, abs=1e-6)
    # a one-hot p = [1 0] has zero entropy but the quirk gives −ln(e/(e+1)) = .3132617
    onehot = torch.tensor([100.0, -100.0]).view(1, 2, 1, 1)
    assert float(L.ldbe_entropy_loss(onehot)) == pytest.approx(0.3132617, abs=1e-6)
    assert float(L.ldbe_entropy_loss(onehot, double_softmax=False)) == pytest.approx(0.0, abs=1e-6)


def test_confidence_weighted_ce():
    # image 0: px0 p=[.5 .5] y=0 CE = ln 2; px1 logits [100 −100] y=0 CE = 0 (excluded); conf [1, .5] → w0 = 1/2
    # image 1: p=[.25 .75] y=1 CE = −ln .75 = .28768207, y=0 CE = ln 4 = 1.38629436; conf [.98 .99] → w1 = 1
    # mean over CE > 0: (.5·.69314718 + .28768207 + 1.38629436)/3 = .67351669
    img0 = torch.tensor([[0.0, 100.0], [0.0, -100.0]], dtype=torch.float64).view(2, 1, 2)
    img1 = torch.tensor([[0.25, 0.25], [0.75, 0.75]], dtype=torch.float64).log().view(2, 1, 2)
    logits = torch.stack([img0, img1])
    labels = torch.tensor([[[0, 0]], [[1, 0]]])
    conf = torch.tensor([[[1.0, 0.5]], [[0.98, 0.99]]])
    assert float(L.confidence_weighted_ce(logits, labels, conf)) == pytest.approx(0.67351669)


def test_region_adaptive_regularisation():
    logits = _logits([[0.8, 0.2], [0.5, 0.5]])
    labels = _lab([0, 255])
    # confident px0: Σ_c −(1/2)·ln p_c = .5·(.22314355 + 1.60943791) = .91629073; /(C·N = 2) = .45814537
    assert float(L.confident_kld_loss(logits, labels)) == pytest.approx(0.45814537)
    # ignored px1: −2·(.5 ln .5) = .69314718; /(C·N = 2) = .34657359
    assert float(L.ignored_entropy_loss(logits, labels)) == pytest.approx(0.34657359)


def test_region_adaptive_regularisation_guards_empty_regions():
    logits = _logits([[0.8, 0.2]]).requires_grad_()
    for loss in (L.confident_kld_loss(logits, _lab([255])), L.ignored_entropy_loss(logits, _lab([0]))):
        assert loss.item() == 0.0 and loss.requires_grad


def test_ignored_consistency_soft_ce_over_nonzero_terms():
    student = _logits([[0.8, 0.2], [0.8, 0.2]])
    labels = _lab([0, 255])  # only px1 (ignored) counts
    # q = [.5 .5]: (.5·.22314355 + .5·1.60943791) / 2 nonzero terms = .45814537
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64).t().reshape(1, 2, 1, 2)
    assert float(L.ignored_consistency_loss(student, q, labels)) == pytest.approx(0.45814537)
    # q = [1 0]: one nonzero term −ln .8 = .22314355 (denominator 1, not C·N = 2)
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64).t().reshape(1, 2, 1, 2)
    assert float(L.ignored_consistency_loss(student, q, labels)) == pytest.approx(0.22314355)
    assert float(L.ignored_consistency_loss(student, q, _lab([0, 0]))) == 0.0


def test_reverse_ce_is_9_21_times_one_minus_p():
    logits = _logits([[0.8, 0.2], [0.5, 0.5], [0.6, 0.4]])
    # −ln 1e-4 = 9.21034037; px0 y=0: 9.21034037·.2 = 1.84206807; px2 y=1: ·.6 = 5.52620422; px1 ignored
    assert float(L.reverse_ce_loss(logits, _lab([0, 255, 1]))) == pytest.approx((1.84206807 + 5.52620422) / 2)


def test_soft_ce_and_prototype_consistency():
    # soft CE: q = [.5 .5], p = [.8 .2]: .5·(.22314355 + 1.60943791) = .91629073
    logits = torch.tensor([[0.8, 0.2]], dtype=torch.float64).log()
    assert float(L.soft_ce_loss(logits, torch.tensor([[0.5, 0.5]], dtype=torch.float64))) == pytest.approx(0.91629073)
    # KL(q‖p), q = [.8 .2] (teacher), p = [.5 .5]: .8 ln 1.6 + .2 ln .4 = .37600291 − .18325815 = .19274476
    # mean over B·C·H·W = 2 elements → .09637238
    student, teacher = _logits([[0.5, 0.5]]), _logits([[0.8, 0.2]])
    assert float(L.prototype_consistency_loss(student, teacher)) == pytest.approx(0.09637238)


# ---------------------------------------------------------------------------------- mixing
def test_mix_with_next_pastes_image_i_onto_the_next():
    x = torch.tensor([[1, 2], [3, 4], [5, 6]]).view(3, 1, 2)  # [B,H,W]
    masks = torch.tensor([[True, False], [False, True], [False, False]]).view(3, 1, 2)
    # out0 = [x0[0], x1[1]] = [1 4]; out1 = [x2[0], x1[1]] = [5 4]; out2 = x0 = [1 2]
    assert M.mix_with_next(x, masks).flatten().tolist() == [1, 4, 5, 4, 1, 2]
    imgs = x.unsqueeze(1).expand(3, 3, 1, 2)  # [B,C,H,W]: the mask broadcasts over channels
    assert M.mix_with_next(imgs, masks)[:, 2].flatten().tolist() == [1, 4, 5, 4, 1, 2]


def test_classmix_masks_take_half_of_the_present_classes():
    labels = torch.tensor([[0, 1, 2, 3, 3, 7]]).view(1, 1, 6).expand(4, 1, 6).clone()
    labels[3] = 5  # one class only: ⌊1/2⌋ = 0 classes → empty mask
    masks = M.classmix_masks(labels, torch.Generator().manual_seed(0))
    for i in range(3):
        chosen = labels[i][masks[i]].unique()
        assert chosen.numel() == 2  # ⌊5 classes / 2⌋
        assert torch.equal(masks[i], torch.isin(labels[i], chosen))  # all pixels of a chosen class
    assert not masks[3].any()


def test_paste_classes_copies_every_hard_class_pixel():
    img, lab = torch.zeros(1, 1, 4), torch.tensor([[0, 0, 0, 0]])
    src_img, src_lab = torch.ones(1, 1, 4), torch.tensor([[3, 5, 3, 255]])
    out_img, out_lab, mask = M.paste_classes(img, lab, src_img, src_lab, torch.tensor([3, 9]))
    assert out_lab.tolist() == [[3, 0, 3, 0]] and out_img.flatten().tolist() == [1, 0, 1, 0]
    assert mask.tolist() == [[True, False, True, False]]
