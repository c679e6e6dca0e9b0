"""Lab 03 exercises (log_quantize, kmeans_step): reference solutions pass, each typical mistake fails with its hint."""

from __future__ import annotations

import numpy as np
import pytest
from grading_support import define
from grading_support import sol as _sol

from quantlab.grading import REGISTRY, exercises_of_lab, run_exercise

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # from deliberately wrong learner code



def test_lab03_exercises_registered_with_forbids():
    assert exercises_of_lab("03") == ["log_quantize", "kmeans_step"]
    assert "quantlab.nonlinear.pow2_quantize" in REGISTRY["log_quantize"].forbids
    assert "quantlab.nonlinear.lloyd_step" in REGISTRY["kmeans_step"].forbids


@pytest.mark.parametrize("name", ["log_quantize", "kmeans_step"])
def test_solution_passes_and_stub_is_not_attempted(name):
    assert run_exercise(define(_sol.SOLUTIONS[name], name)).status == "passed"
    assert run_exercise(define(_sol.STUBS[name], name)).status == "not attempted"


def test_solution_agrees_with_an_independent_slow_loop():
    """The reference (library) against a literal per-element loop written here, on a fresh input."""
    import math

    fn = define(_sol.SOLUTIONS["log_quantize"], "log_quantize")
    r = np.random.default_rng(11).normal(size=50).astype(np.float32)
    s, K = float(np.abs(r).max()), 3
    slow = []
    for v in r.astype(np.float64):
        m = min(max(round(math.log2(abs(v) / s)) + K, 0), K) if v != 0 else 0
        slow.append(0.0 if m == 0 else math.copysign(s * 2.0 ** (m - K), v))
    np.testing.assert_allclose(fn(r, 3), slow, rtol=1e-6)
    np.testing.assert_allclose(REGISTRY["log_quantize"].reference(r, 3), slow, rtol=1e-6)


LOG_WRONG = {
    "forgetting the sign": """
import numpy as np
def log_quantize(r, bits):
    K = 2 ** (bits - 1) - 1
    s = max(np.abs(r).max(), 1e-7)
    m = np.clip(np.round(np.log2(np.abs(r) / s + 1e-30)) + K, 0, K)
    return s * 2.0 ** (m - K) * (m > 0)
""",
    "log of a negative": """
import numpy as np
def log_quantize(r, bits):
    K = 2 ** (bits - 1) - 1
    s = np.abs(r).max()
    m = np.clip(np.round(np.log2(r / s)) + K, 0, K)
    return np.sign(r) * s * 2.0 ** (m - K)
""",
    "log of zero": """
import numpy as np
def log_quantize(r, bits):
    K = 2 ** (bits - 1) - 1
    s = np.abs(r).max()
    m = np.clip(np.round(np.log2(np.abs(r) / s)) + K, 0, K)
    return np.sign(r) * s * 2.0 ** (m - K) * (m > 0)
""",
    "wrong space": """
import numpy as np
def log_quantize(r, bits):
    K = 2 ** (bits - 1) - 1
    s = max(np.abs(r).max(), 1e-7)
    levels = np.concatenate([[0.0], s * 2.0 ** np.arange(1 - K, 1)])
    mag = levels[np.abs(np.abs(r)[:, None] - levels[None]).argmin(1)] if r.ndim == 1 else None
    if mag is None:
        flat = np.abs(r).reshape(-1)
        mag = levels[np.abs(flat[:, None] - levels[None]).argmin(1)].reshape(r.shape)
    return np.sign(r) * mag
""",
    "no clip": """
import numpy as np
def log_quantize(r, bits):
    s = max(np.abs(r).max(), 1e-7)
    with np.errstate(divide="ignore"):
        e = np.round(np.log2(np.abs(r) / s))
    return np.where(r == 0, 0.0, np.sign(r) * s * 2.0 ** e)
""",
}
LOG_HINTS = {"forgetting the sign": "all >= 0", "log of a negative": "forgetting the sign",
             "log of zero": "log of zero", "wrong space": "wrong space", "no clip": "clip m to [0, K]"}


@pytest.mark.parametrize("kind", list(LOG_WRONG))
def test_log_quantize_mistakes_fail_with_their_hint(kind):
    res = run_exercise(define(LOG_WRONG[kind], "log_quantize"))
    assert res.status == "failed"
    assert LOG_HINTS[kind] in res.feedback, res.feedback


STEP_WRONG = {
    "empty cluster NaN": ("""
import numpy as np
def kmeans_step(x, centroids):
    codes = np.abs(x[:, None] - centroids[None]).argmin(1)
    new = np.array([x[codes == j].mean() for j in range(len(centroids))])
    return new, codes
""", "empty clusters"),
    "mean of all": ("""
import numpy as np
def kmeans_step(x, centroids):
    codes = np.abs(x[:, None] - centroids[None]).argmin(1)
    return np.full(len(centroids), x.mean()), codes
""", "wrong set"),
    "divided by N": ("""
import numpy as np
def kmeans_step(x, centroids):
    codes = np.abs(x[:, None] - centroids[None]).argmin(1)
    new = centroids.astype(np.float64).copy()
    for j in range(len(new)):
        if (codes == j).any():
            new[j] = x[codes == j].sum() / len(x)
    return new, codes
""", "IN that cluster"),
    "signed distance": ("""
import numpy as np
def kmeans_step(x, centroids):
    codes = (x[:, None] - centroids[None]).argmin(1)
    new = centroids.astype(np.float64).copy()
    for j in range(len(new)):
        if (codes == j).any():
            new[j] = x[codes == j].mean()
    return new, codes
""", "signed difference"),
    "codes of the new centroids": ("""
import numpy as np
def kmeans_step(x, centroids):
    codes = np.abs(x[:, None] - centroids[None]).argmin(1)
    new = centroids.astype(np.float64).copy()
    for j in range(len(new)):
        if (codes == j).any():
            new[j] = x[codes == j].mean()
    return new, np.abs(x[:, None] - new[None]).argmin(1)
""", "OLD centroids"),
}


@pytest.mark.parametrize("kind", list(STEP_WRONG))
def test_kmeans_step_mistakes_fail_with_their_hint(kind):
    src, hint = STEP_WRONG[kind]
    res = run_exercise(define(src, "kmeans_step"))
    assert res.status == "failed"
    assert hint in res.feedback, res.feedback


def test_hostile_learner_code_is_a_failure():
    for src in ("def kmeans_step(x, centroids):\n    raise ValueError('no')\n",
                "def kmeans_step(x, centroids):\n    return 'nonsense'\n",
                "def kmeans_step(x, centroids):\n    x[:] = 0\n    return centroids, x.astype(int)\n"):
        assert run_exercise(define(src, "kmeans_step")).status == "failed"
    assert run_exercise(define("def log_quantize(r, bits):\n    return r * float('nan')\n", "log_quantize")).status \
        == "failed"
