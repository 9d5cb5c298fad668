"""pyroflows: normalizing flows for Pyro (PyTorch) and NumPyro (JAX).

Importing ``pyroflows`` imports neither torch nor JAX. Pick a backend:

>>> import pyroflows.pyro as pf  # doctest: +SKIP
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
