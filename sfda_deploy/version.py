"""The package version (ground layer: every layer may read it without importing the package facade)."""
__version__ = "0.1.0"
