"""Any folder of images (recursive, sorted by path), unlabelled: target frames for adaptation."""
from __future__ import annotations

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import IMAGE_EXTENSIONS, ImageDataset, check_root, layout_error, list_images


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "folder") -> ImageDataset:
    """``split`` is ignored: every image under ``data_root`` is used."""
    root = check_root(data_root, target)
    if root.is_file():
        images = [root] if root.suffix.lower() in IMAGE_EXTENSIONS else []
    else:
        images = list_images(root)
    if not images:
        raise layout_error(root, f"images ({', '.join(IMAGE_EXTENSIONS)}) in it or its sub-folders",
                           "folder of target images (or use --target video for a video file)")
    return ImageDataset([(p, None) for p in images], None, transform, skip_corrupt)
