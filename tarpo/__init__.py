"""TARPO: token-wise hard/soft routing with group-relative policy optimisation.

The library is importable without DVC or MLflow; those are imported lazily where used.
"""

__version__ = "0.1.0"
