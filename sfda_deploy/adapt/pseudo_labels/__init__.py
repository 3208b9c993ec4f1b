"""Pseudo-label rules (pure functions: probabilities in, labels/masks/thresholds out), filed by concept.

One public namespace: ``sfda_deploy.adapt.pseudo_labels.<name>``; the math lives in one module per
concept: ``thresholds`` (class thresholds: LDBE, IAS), ``masks`` (which pixels keep a label),
``ranking`` (images, classes, pixels by rank), ``weights`` (pixel weights), ``prototypes`` (class
prototypes, the labels they give, Sinkhorn).
"""
from .masks import (  # noqa: F401
    downscale_labels,
    ldbe_global_mask,
    ldbe_image_mask,
    ldbe_pseudo_labels,
    selective_masks,
    threshold_labels,
)
from .prototypes import (  # noqa: F401
    class_feature_sums,
    class_prior,
    merge_class_prototypes,
    prototype_logits,
    prototype_update,
    rectify_soft_labels,
    sinkhorn,
    update_class_prototypes,
)
from .ranking import (  # noqa: F401
    entropy_rank_split,
    hard_class_probs,
    hard_classes,
    image_entropy_scores,
    kth_ranked_class,
    ldbe_draw_k,
    random_other_class,
    update_class_values,
)
from .thresholds import (  # noqa: F401
    LDBE_MAX_THRESHOLD,
    ias_update,
    ldbe_class_threshold,
    ldbe_class_thresholds,
    ldbe_subsample_confidences,
)
from .weights import border_weight, confidence_weight, scaled_rows  # noqa: F401
