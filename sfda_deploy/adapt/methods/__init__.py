"""Recipes: one module per method, each a frozen config dataclass + a ``step`` function."""
