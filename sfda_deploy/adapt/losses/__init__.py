"""Loss functions of the adaptation recipes (pure: tensors in, scalar tensor out).

One public namespace: ``sfda_deploy.adapt.losses.<name>``; the math lives in one module per
family of methods.
"""
from .peers import (  # noqa: F401
    max_squares_loss,
    ldbe_entropy_loss,
    confidence_weighted_ce,
    confident_kld_loss,
    ignored_entropy_loss,
    ignored_consistency_loss,
    reverse_ce_loss,
    soft_ce_loss,
    prototype_consistency_loss,
)
from .negative import negative_learning_loss  # noqa: F401
from .atp import (  # noqa: F401
    normalized_entropy,
    curriculum_entropy_terms,
    curriculum_entropy_loss,
    pixel_cross_entropy,
    prototype_contrastive_loss,
)
from .distill import distillation_loss, tempered_probs  # noqa: F401
