"""Files shipped inside the package: the bundled source model (ground layer: no imports of the package).

``BUNDLED_MODEL`` is the demo's source model and ``segment``'s default ``--model``
(README, "Bundled model" says how it is made).
"""
from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "source_mobilenetv2_aspp.safetensors"
