"""Interactive explorers for the labs (one module per lab topic); see :mod:`quantlab.viz._base`."""

from ._base import static_figure

__all__ = ["static_figure"]
