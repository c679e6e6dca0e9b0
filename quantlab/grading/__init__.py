r"""Exercise checks with diagnostic hints: ``check(fn)`` in notebooks, ``python -m quantlab.grade`` in bulk.

In a lab, right after an exercise cell::

    from quantlab.grading import check
    check(quantize)          # prints ✔/✘ per case, the first failure with a hint; returns a CheckResult

Registered exercises (id = function name): lab 01 ``quantize``, ``dequantize``, ``asymmetric_params``,
``symmetric_params``; lab 02 ``per_channel_minmax``, ``per_channel_scale``; lab 03 ``log_quantize``,
``kmeans_step``; lab 04 ``requant_multiplier``; lab 05 ``kl_divergence``, ``quantize_histogram``;
lab 06 ``bias_correction``, ``weight_correction``; lab 07 ``fake_quant_ste``, ``ema_range``,
``export_weights``; lab 08 ``pack_sign_bits``, ``xnor_popcount_dot``, ``binarize_with_alpha``; lab 09
``group_quantize_int4``, ``smooth_layer``. Modules: ``compare``, ``exercise``, ``sandbox``, ``forbid``, ``hints``,
``runner``, ``report``, ``batch``, ``cli`` (``core`` re-exports what exercise modules need).
"""

from . import (  # noqa: F401 - each module registers its exercises
    checks_binary,
    checks_calibration,
    checks_correction,
    checks_engine,
    checks_granularity,
    checks_linear,
    checks_nonlinear,
    checks_qat,
    checks_transformer,
)
from .batch import exercises_of_lab
from .core import (
    DEFAULT_TIMEOUT,
    REGISTRY,
    STATUSES,
    Case,
    CaseResult,
    CheckResult,
    Diagnosis,
    Exercise,
    check,
    format_report,
    get_exercise,
    register,
    run_exercise,
)

# Registry in lab order (01, 02, 03, ...), then definition order within a lab.
_ordered = sorted(REGISTRY.items(), key=lambda kv: kv[1].lab)
REGISTRY.clear()
REGISTRY.update(_ordered)
del _ordered

__all__ = [
    "check", "run_exercise", "CheckResult", "CaseResult", "Exercise", "Case", "Diagnosis", "REGISTRY",
    "register", "get_exercise", "format_report", "exercises_of_lab", "DEFAULT_TIMEOUT", "STATUSES",
]
