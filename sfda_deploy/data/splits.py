"""Split selection for layouts without split folders (GTA5, SYNTHIA): optional ``<root>/<split>.txt``."""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.errors import SfdaError


def select(root: Path, split: str, images: list[Path], what: str) -> list[Path]:
    """Images of ``split``: those listed in ``root/<split>.txt`` (one file name or stem a line) when it
    exists, else all images for ``train``/``all``; any other split without a list is an error."""
    listing = root / f"{split}.txt"
    if listing.is_file():
        wanted = {Path(line.strip()).stem for line in listing.read_text().splitlines() if line.strip()}
        chosen = [p for p in images if p.stem in wanted]
        if not chosen:
            raise SfdaError(f"{listing} names none of the images in {root}: list image file names, one a line")
        return chosen
    if split in ("train", "all"):
        return images
    raise SfdaError(f"{what} has no '{split}' split folder: write {listing} listing its image names, "
                    "or use --split train (all images)")
