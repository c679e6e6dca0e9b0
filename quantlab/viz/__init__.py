"""Interactive explorers for the labs (one module per lab topic); see :mod:`quantlab.viz._base`."""
