# ruff: noqa: E501
"""Lab 06 exercises: reference solutions pass, each typical mistake fails with its own hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from grading_support import define
from grading_support import sol as _sol

import quantlab.correction as qc
from quantlab.grading import REGISTRY, run_exercise
from quantlab.grading.checks_correction import bias_correction_reference, weight_correction_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("ex_id", ["bias_correction", "weight_correction"])
def test_solution_passes_stub_not_attempted(ex_id):
    assert run_exercise(define(_sol.SOLUTIONS[ex_id]), ex_id).status == "passed"
    assert run_exercise(define(_sol.STUBS[ex_id]), ex_id).status == "not attempted"
    assert REGISTRY[ex_id].lab == "06" and REGISTRY[ex_id].forbids


def test_references_agree_with_the_library():
    for case in REGISTRY["bias_correction"].prepared_cases():
        lib = qc.bias_correction_term(torch.from_numpy(case.args[0]), torch.from_numpy(case.args[1]))
        assert np.allclose(lib.numpy(), bias_correction_reference(*case.args), atol=1e-5)
    for case in REGISTRY["weight_correction"].prepared_cases():
        lib = qc.weight_correction(torch.from_numpy(case.args[0]), torch.from_numpy(case.args[1]), "text")
        assert np.allclose(lib.numpy(), weight_correction_reference(*case.args), atol=1e-6)


BIAS_WRONG = {
    "wrong sign": ("return np.mean(a_q, axis=(0,) + tuple(range(2, a_q.ndim))) - "
                   "np.mean(a_fp, axis=(0,) + tuple(range(2, a_fp.ndim)))", "wrong sign"),
    "no spatial mean": ("return a_fp.mean(axis=0) - a_q.mean(axis=0)", "spatial mean"),
    "wrong axis": ("return a_fp.mean(axis=1) - a_q.mean(axis=1)", "wrong averaging axis"),
    "per tensor": ("return np.full(a_fp.shape[1], a_fp.mean() - a_q.mean())", "per output channel"),
}


@pytest.mark.parametrize("name", list(BIAS_WRONG))
def test_bias_correction_mistakes_get_their_hint(name):
    body, hint = BIAS_WRONG[name]
    fn = define(f"import numpy as np\ndef bias_correction(a_fp, a_q):\n    {body}\n")
    res = run_exercise(fn, "bias_correction")
    assert res.status == "failed" and hint in res.feedback, res.feedback


_W_HEAD = ("import numpy as np\ndef weight_correction(w, w_hat):\n    ax = tuple(range(1, w.ndim))\n"
           "    e_w = w.mean(axis=ax, keepdims=True); e_h = w_hat.mean(axis=ax, keepdims=True)\n")
WEIGHT_WRONG = {
    "division by zero": ("    zeta = np.linalg.norm((w - e_w).reshape(len(w), -1), axis=1).reshape(e_w.shape) / "
                         "np.linalg.norm((w_hat - e_h).reshape(len(w), -1), axis=1).reshape(e_w.shape)\n"
                         "    return zeta * (w_hat + e_w - e_h)\n", "division by zero"),
    "variance": ("    v_w = ((w - e_w) ** 2).mean(axis=ax, keepdims=True); v_h = ((w_hat - e_h) ** 2).mean(axis=ax, keepdims=True)\n"
                 "    zeta = np.where(v_h == 0, 1, v_w / np.where(v_h == 0, 1, v_h))\n"
                 "    return np.where(v_h == 0, w_hat, zeta * (w_hat + e_w - e_h))\n", "variance instead of the norm"),
    "mean-and-norm rule": ("    n_w = np.sqrt(((w - e_w) ** 2).sum(axis=ax, keepdims=True)); n_h = np.sqrt(((w_hat - e_h) ** 2).sum(axis=ax, keepdims=True))\n"
                           "    zeta = n_w / np.where(n_h == 0, 1, n_h)\n"
                           "    return np.where(n_h == 0, w_hat, (w_hat - e_h) * zeta + e_w)\n", "mean-and-norm rule"),
    "wrong axis": ("    e_w = w.mean(axis=0, keepdims=True); e_h = w_hat.mean(axis=0, keepdims=True)\n"
                   "    zeta = np.sqrt(((w - e_w) ** 2).sum(axis=0, keepdims=True) / ((w_hat - e_h) ** 2).sum(axis=0, keepdims=True))\n"
                   "    return zeta * (w_hat + e_w - e_h)\n", "wrong averaging axis"),
}


@pytest.mark.parametrize("name", list(WEIGHT_WRONG))
def test_weight_correction_mistakes_get_their_hint(name):
    body, hint = WEIGHT_WRONG[name]
    res = run_exercise(define(_W_HEAD + body), "weight_correction")
    assert res.status == "failed" and hint in res.feedback, res.feedback


def test_hostile_code_fails_with_a_reason():
    for src in ("def weight_correction(w, w_hat):\n    w_hat *= 2\n    return w_hat\n",
                "def weight_correction(w, w_hat):\n    return float('nan') * w\n",
                "def weight_correction(w, w_hat):\n    raise ValueError('x')\n"):
        assert run_exercise(define(src), "weight_correction").status == "failed"
