"""Source-free adaptation: one training loop (``loop.py``), methods as data + pure functions.

``losses.py`` and ``pseudo_labels.py`` hold the math (pure functions on logits/probabilities),
``methods/`` one small file per recipe (its config dataclass + its ``step``), ``loop.py`` the loop.
"""
