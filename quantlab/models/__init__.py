"""The lab's small CNN and the one model walker: a package of three modules, one concept each.

* :mod:`.cnn` -- ``SmallCNN`` (conv1 bn1 relu1 pool1 conv2 bn2 relu2 pool2 flatten fc1 relu3 fc2),
  deterministic ``train`` (``fit``: the one training loop), ``evaluate``, ``load_trained`` (the checkpoint
  ``data/cnn.pt``, found through :func:`quantlab.data.data_dir`) and the CLI ``python -m quantlab.models train``.
* :mod:`.walker` -- THE model walker and hook mechanism: ``WEIGHT_LAYERS``, ``find_layers``,
  ``replace_layers``, ``activation_hooks``, ``collect_activations``.
* :mod:`.surgery` -- function-preserving edits: ``fold_batchnorm``, ``with_outlier_channel``.

Import from ``quantlab.models``; the split into files is an implementation detail.
"""

# ``main`` (the CLI) is re-exported, not in __all__.
from .cnn import CHECKPOINT, SmallCNN, evaluate, fit, load_trained, train
from .cnn import main as main
from .surgery import fold_batchnorm, with_outlier_channel
from .walker import WEIGHT_LAYERS, activation_hooks, collect_activations, find_layers, replace_layers

__all__ = [
    "CHECKPOINT", "SmallCNN", "train", "fit", "evaluate", "load_trained", "fold_batchnorm",
    "WEIGHT_LAYERS", "find_layers", "replace_layers", "activation_hooks", "collect_activations",
    "with_outlier_channel",
]
