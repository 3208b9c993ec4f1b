"""Pseudo-label selection rules (pure functions: probabilities in, labels/masks/thresholds out).

One public namespace: ``sfda_deploy.adapt.pseudo_labels.<name>``; the math lives in one module per
family of methods.
"""
from .peers import (  # noqa: F401
    ldbe_subsample_confidences,
    ldbe_class_threshold,
    ldbe_class_thresholds,
    ldbe_global_mask,
    ldbe_image_mask,
    ldbe_pseudo_labels,
    ldbe_draw_k,
    kth_ranked_class,
    random_other_class,
    selective_masks,
    ias_update,
    threshold_labels,
    update_class_values,
    hard_classes,
    hard_class_probs,
    rectify_soft_labels,
    prototype_logits,
    sinkhorn,
    class_prior,
    prototype_update,
)
from .atp import (  # noqa: F401
    image_entropy_scores,
    entropy_rank_split,
    confidence_weight,
    border_weight,
    scaled_rows,
    downscale_labels,
    update_class_prototypes,
)
