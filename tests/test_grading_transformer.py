# ruff: noqa: E501
"""Lab 09 exercises: reference solutions pass, each typical mistake fails with its own hint."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from grading_support import define
from grading_support import sol as _sol

import quantlab.grading.checks_transformer as ct
from quantlab.grading import REGISTRY, run_exercise
from quantlab.granularity import PerGroup
from quantlab.smoothquant import smooth_scales
from quantlab.transformer_quant import fake_quantize_weight


@pytest.mark.parametrize("ex_id", ["group_quantize_int4", "smooth_layer"])
def test_solution_passes_stub_not_attempted(ex_id):
    assert run_exercise(define(_sol.SOLUTIONS[ex_id]), ex_id).status == "passed"
    assert run_exercise(define(_sol.STUBS[ex_id]), ex_id).status == "not attempted"
    assert REGISTRY[ex_id].lab == "09" and REGISTRY[ex_id].forbids


def test_references_agree_with_the_library():
    for case in REGISTRY["group_quantize_int4"].prepared_cases():
        w, g = case.args
        lib = fake_quantize_weight(torch.from_numpy(w), 4, PerGroup(g)).numpy()
        assert np.allclose(lib, ct.group_quantize_int4_reference(w, g), atol=1e-6)
    for case in REGISTRY["smooth_layer"].prepared_cases():
        x, w, a = case.args
        s = smooth_scales(torch.from_numpy(np.abs(x).max(0)), torch.from_numpy(np.abs(w).max(0)), a).numpy()
        xs, ws = ct.smooth_layer_reference(x, w, a)
        assert np.allclose(xs, x / s, rtol=1e-5) and np.allclose(ws, w * s, rtol=1e-5)
        assert np.allclose(xs @ ws.T, x.astype(np.float64) @ w.astype(np.float64).T, rtol=1e-9, atol=1e-9)


def test_doctests():
    res = doctest.testmod(ct, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted > 0


GQ = "import numpy as np\ndef group_quantize_int4(w, group_size):\n{}\n"
SL = "import numpy as np\ndef smooth_layer(x, w, alpha):\n{}\n"
WRONG = [
    ("group_quantize_int4", GQ.format(
        "    w = np.asarray(w, np.float64).T.copy()\n    out = np.zeros_like(w)\n"
        "    for j in range(0, w.shape[1], group_size):\n        g = w[:, j:j + group_size]\n"
        "        s = np.abs(g).max(axis=1, keepdims=True) / 7\n"
        "        out[:, j:j + group_size] = np.clip(np.round(g / s), -7, 7) * s\n    return out.T"),
     "groups along the wrong axis"),
    ("group_quantize_int4", GQ.format("    s = np.abs(w).max() / 7\n    return np.clip(np.round(w / s), -7, 7) * s"),
     "one scale for the whole tensor"),
    ("group_quantize_int4", GQ.format(
        "    w = np.asarray(w, np.float64)\n    out = w.copy()\n"
        "    for j in range(0, (w.shape[1] // group_size) * group_size, group_size):\n        g = w[:, j:j + group_size]\n"
        "        s = np.abs(g).max(axis=1, keepdims=True) / 7\n"
        "        out[:, j:j + group_size] = np.clip(np.round(g / s), -7, 7) * s\n    return out"),
     "last partial group"),
    ("smooth_layer", SL.format("    s = np.abs(x).max(0) ** (1 - alpha) / np.abs(w).max(0) ** alpha\n    return x / s, w * s"),
     "α on the wrong side"),
    ("smooth_layer", SL.format("    s = np.abs(x).max(0) ** alpha / np.abs(w).max(0) ** (1 - alpha)\n    return x / s, w"),
     "forgot to scale W"),
    ("smooth_layer", SL.format("    s = np.abs(x).max(1) ** alpha / np.abs(w).max(1) ** (1 - alpha)\n    return x / s, w * s"),
     "wrong axis"),
]


@pytest.mark.parametrize("name,src,hint", WRONG, ids=[f"{w[0]}:{w[2]}" for w in WRONG])
def test_wrong_solution_gets_its_hint(name, src, hint):
    res = run_exercise(define(src), name)
    assert res.status == "failed" and res.points == 0
    assert hint in res.feedback, res.feedback
