"""Loss functions of the adaptation recipes (pure: tensors in, scalar tensor out).

One public namespace: ``sfda_deploy.adapt.losses.<name>``; the math lives in one module per
family of methods.
"""
from .peers import (  # noqa: F401
    max_squares_loss,
    negative_learning_loss,
    ldbe_entropy_loss,
    confidence_weighted_ce,
    confident_kld_loss,
    ignored_entropy_loss,
    ignored_consistency_loss,
    reverse_ce_loss,
    soft_ce_loss,
    prototype_consistency_loss,
)
from .distill import distillation_loss, tempered_probs  # noqa: F401
