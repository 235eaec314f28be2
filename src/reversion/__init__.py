"""reversion: the reproducible companion to arXiv 2606.28525."""

__version__ = "0.1.0"

from reversion.infra.kernels import pin_environment as _pin

_pin()  # before anything loads torch: see reversion.infra.kernels
