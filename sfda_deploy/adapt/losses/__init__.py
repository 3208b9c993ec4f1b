"""Loss functions of the adaptation recipes (pure: tensors in, scalar tensor out), filed by concept.

One public namespace: ``sfda_deploy.adapt.losses.<name>``; the math lives in one module per concept:
``entropy`` (normalised entropy, curriculum entropy, maximum squares, LDBE/HIAST entropy terms),
``cross_entropy`` (empty-safe labelled CE, ATP's weighted CE, confidence-weighted, reverse and soft CE),
``negative`` (negative learning), ``prototypes`` (prototype contrastive / consistency), ``distill``
(tempered distillation, teacher-student consistency); ``base.empty_loss`` is the zero of an empty region.
"""
from .base import empty_loss  # noqa: F401
from .cross_entropy import (  # noqa: F401
    confidence_weighted_ce,
    labelled_cross_entropy,
    pixel_cross_entropy,
    reverse_ce_loss,
    soft_ce_loss,
)
from .distill import distillation_loss, ignored_consistency_loss, tempered_probs  # noqa: F401
from .entropy import (  # noqa: F401
    confident_kld_loss,
    curriculum_entropy_loss,
    curriculum_entropy_terms,
    ignored_entropy_loss,
    ldbe_entropy_loss,
    max_squares_loss,
    normalized_entropy,
)
from .negative import negative_learning_loss  # noqa: F401
from .prototypes import prototype_consistency_loss, prototype_contrastive_loss  # noqa: F401
