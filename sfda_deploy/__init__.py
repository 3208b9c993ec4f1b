"""sfda-deploy: source-free domain adaptation for semantic segmentation, to a verified engine.

Python API::

    import sfda_deploy
    model, meta = sfda_deploy.load_model("runs/adapt/atp/model.safetensors")
    logits = model(meta.normalize(images_uint8))   # [B,C,H,W]
"""
__version__ = "0.1.0"

from sfda_deploy.errors import SfdaError  # noqa: E402


def load_model(path, device="cpu"):
    """Load a checkpoint (``.safetensors`` or legacy ``.pth``) → (model in eval mode, ModelMeta)."""
    from sfda_deploy.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["SfdaError", "load_model", "__version__"]
