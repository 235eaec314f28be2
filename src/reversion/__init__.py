"""reversion: the reproducible companion to arXiv 2606.28525."""

__version__ = "0.1.0"
