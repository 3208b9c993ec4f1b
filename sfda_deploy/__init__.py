"""sfda-deploy: source-free domain adaptation for semantic segmentation, to a verified engine.

Python API::

    import sfda_deploy
    model, meta = sfda_deploy.load_model("runs/adapt/atp/model.safetensors")
    logits = model(meta.normalize(images_uint8))   # [B,C,H,W]
"""
import os

# OpenCV and its FFmpeg back-end print their own warnings ("moov atom not found", "can't open/read file")
# to stderr before our one-line error; they are read when cv2 loads, so set them before any import of cv2.
# Set them yourself (e.g. OPENCV_LOG_LEVEL=DEBUG) to see the libraries' messages.
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

from sfda_deploy.errors import SfdaError  # noqa: E402
from sfda_deploy.version import __version__  # noqa: E402


def load_model(path, device="cpu", **import_kwargs):
    """Load a checkpoint (``.safetensors`` or legacy ``.pth``) → (model in eval mode, ModelMeta).

    A ``.pth`` needs ``arch=`` and ``normalization=`` (see ``sfda_deploy.pth_import.import_pth``).
    """
    from sfda_deploy.checkpoint import load_model as _load

    return _load(path, device=device, **import_kwargs)


__all__ = ["SfdaError", "load_model", "__version__"]
