"""Continual test-time adaptation (TTA) of a segmentation model on a stream of frames.

Pure maths (``rules``: losses, pseudo labels, restore; ``drift``: the collapse detector) apart from the
small state object and the one update step (``session``); the methods (``methods``: TENT, CoTTA and
``anchored``) are a config dataclass plus a step function each, like the offline recipes. The frame
buffering, timing and logging around them are ``adapter.OnlineAdapter``, the plug-in ``segment`` hands to
``runtime.pipeline.stream_inference``: online adaptation lives in this folder alone.
"""
from sfda_deploy.adapt.online.drift import DriftConfig, drift_reason, drift_scores  # noqa: F401
from sfda_deploy.adapt.online.methods import (  # noqa: F401
    ONLINE_METHODS,
    get_online_method,
    online_method_names,
    register_online,
)
from sfda_deploy.adapt.online.session import OnlineState, UpdateResult, reset, start, update  # noqa: F401
