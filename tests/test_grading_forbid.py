"""Forbidding (issue 7 §2): an exercise cannot be solved by calling the library's or torch's version of it."""

from __future__ import annotations

import json
import sys

import nbformat
import numpy as np
import pytest
import torch

import quantlab as ql
import quantlab.calibration
import quantlab.engine
import quantlab.linear
from quantlab.grade import main
from quantlab.grading import REGISTRY, check, run_exercise
from quantlab.grading.forbid import ForbiddenCall, Guard, resolve

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SETUP = "import numpy as np\nimport torch\nimport quantlab as ql\n"


def define(src: str, name: str):
    ns: dict = {}
    exec(SETUP + src, ns)
    return ns[name]


def assert_refused(res, shown: str):
    assert res.status == "failed" and res.points == 0, res.feedback
    assert f"may not call `{shown}`" in res.feedback and "write the formula yourself" in res.feedback, res.feedback


Q = "def quantize(r, s, z, q_min, q_max{extra}):\n    return {body}\n"
BYPASSES = [
    ("top-level name", Q.format(extra="", body="ql.quantize(r, s, z, q_min, q_max)")),
    ("submodule import in the body",
     Q.format(extra="", body="__import__('quantlab.linear', fromlist=['x']).quantize(r, s, z, q_min, q_max)")),
    ("from ... import ... as, at cell level",
     "from quantlab.linear import quantize as qz\n" + Q.format(extra="", body="qz(r, s, z, q_min, q_max)")),
    ("from ... import inside the function",
     "def quantize(r, s, z, q_min, q_max):\n    from quantlab.linear import quantize as f\n"
     "    return f(r, s, z, q_min, q_max)\n"),
    ("getattr with a built name", Q.format(extra="", body="getattr(ql, 'quan' + 'tize')(r, s, z, q_min, q_max)")),
    ("importlib", "import importlib\n" + Q.format(
        extra="", body="importlib.import_module('quantlab.linear').quantize(r, s, z, q_min, q_max)")),
    ("another module's alias", Q.format(extra="", body="__import__('quantlab.granularity', fromlist=['x'])"
                                                       ".quantize(r, s, z, q_min, q_max)")),
    ("default argument bound at definition", Q.format(extra=", _f=ql.quantize", body="_f(r, s, z, q_min, q_max)")),
    ("closure", "def make():\n    f = ql.quantize\n" + "    " + Q.format(extra="", body="f(r, s, z, q_min, q_max)")
     .replace("\n    return", "\n        return") + "    return quantize\nquantize = make()\n"),
    ("caught and retried", "def quantize(r, s, z, q_min, q_max):\n    try:\n"
     "        return ql.quantize(r, s, z, q_min, q_max)\n    except BaseException:\n"
     "        return np.clip(np.round(r / s + z), q_min, q_max)\n"),
    ("torch.quantize_per_tensor", "def quantize(r, s, z, q_min, q_max):\n"
     "    return np.clip(torch.quantize_per_tensor(torch.as_tensor(r), float(np.max(s)), int(np.max(z)), "
     "torch.qint32).int_repr().numpy(), q_min, q_max)\n"),
    ("torch.fake_quantize_per_tensor_affine", "def quantize(r, s, z, q_min, q_max):\n"
     "    fq = torch.fake_quantize_per_tensor_affine(torch.as_tensor(r), float(np.max(s)), int(np.max(z)), "
     "q_min, q_max)\n    return np.round(fq.numpy() / s + z)\n"),
]


@pytest.mark.parametrize("src", [b[1] for b in BYPASSES], ids=[b[0] for b in BYPASSES])
def test_quantize_bypasses_are_refused(src):
    shown = "torch." if "torch." in src and "ql." not in src else "quantlab.quantize"
    res = run_exercise(define(src, "quantize"))
    assert res.status == "failed" and res.points == 0, res.feedback
    assert "may not call `" + shown in res.feedback, res.feedback


def test_library_function_reached_through_another_is_named():
    src = Q.format(extra="", body="np.round(ql.fake_quantize(r, s, z, q_min, q_max) / s + z)")
    assert_refused(run_exercise(define(src, "quantize")), "quantlab.fake_quantize")  # forbidden itself
    g = Guard("quantize", ["quantlab.linear.quantize"])  # only quantize: quantize_tensor reaches it inside
    with pytest.raises(ForbiddenCall, match=r"`quantlab.quantize` \(through `quantlab.granularity.quantize_tensor`\)"):
        with g.active():
            ql.quantize_tensor(torch.ones(3), 8)


@pytest.mark.parametrize("name,src,shown", [
    ("dequantize", "def dequantize(q, s, z):\n    return ql.dequantize(q, s, z)\n", "quantlab.dequantize"),
    ("asymmetric_params", "def asymmetric_params(r_min, r_max, q_min, q_max):\n"
     "    return ql.scale_zero_point(r_min, r_max, q_min, q_max)\n", "quantlab.scale_zero_point"),
    ("asymmetric_params", "from quantlab.granularity import qparams_from_range as qp\n"
     "def asymmetric_params(r_min, r_max, q_min, q_max):\n"
     "    p = qp(torch.tensor(r_min), torch.tensor(r_max), 8)\n    return float(p.s), int(p.z)\n",
     "quantlab.granularity.qparams_from_range"),
    ("symmetric_params", "def symmetric_params(r_min, r_max, q_min, q_max):\n"
     "    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)\n"
     "    obs(torch.tensor([r_min, r_max]))\n    s, z = obs.calculate_qparams()\n    return float(s), int(z)\n",
     "torch.ao.quantization.observer.MinMaxObserver.calculate_qparams"),
    ("symmetric_params", "def symmetric_params(r_min, r_max, q_min, q_max):\n"
     "    obs = __import__('quantlab.observers', fromlist=['x']).MinMaxObserver()\n"
     "    obs(torch.tensor([r_min, r_max]))\n    p = obs.qparams(8, symmetric=True)\n"
     "    return float(p.s), 0\n", "quantlab.observers.MinMaxObserver.qparams"),
    ("per_channel_minmax", "def per_channel_minmax(w, axis):\n"
     "    lo, hi = ql.range_of(torch.from_numpy(w), ql.PerChannel(axis))\n    return lo.numpy(), hi.numpy()\n",
     "quantlab.range_of"),
    ("per_channel_scale", "def per_channel_scale(w, bits, axis=0):\n"
     "    return ql.choose_qparams(torch.from_numpy(w), bits, ql.PerChannel(axis), symmetric=True, "
     "narrow=True).s.numpy()\n", "quantlab.choose_qparams"),
    ("requant_multiplier", "from quantlab.engine import requant_multiplier as rm\n"
     "def requant_multiplier(M):\n    return rm(M)\n", "quantlab.engine.requant_multiplier"),
    ("kl_divergence", "from quantlab import calibration as cal\ndef kl_divergence(p, q):\n"
     "    return cal.kl_divergence(p, q)\n", "quantlab.calibration.kl_divergence"),
    ("kl_divergence", "import torch.nn.functional as F\ndef kl_divergence(p, q):\n"
     "    p, q = torch.as_tensor(p / p.sum()), torch.as_tensor(q / q.sum()).clamp_min(1e-10)\n"
     "    return float(F.kl_div(q.log(), p, reduction='sum'))\n", "torch.nn.functional.kl_div"),
    ("quantize_histogram", "import importlib\ndef quantize_histogram(p, n_levels):\n"
     "    return importlib.import_module('quantlab.calibration').quantize_histogram(p, n_levels)\n",
     "quantlab.calibration.quantize_histogram"),
])
def test_every_exercise_refuses_its_own_answer(name, src, shown):
    res = run_exercise(define(src, name))
    assert_refused(res, shown)


def test_every_exercise_declares_forbids_that_resolve():
    for ex in REGISTRY.values():
        assert ex.forbids, f"{ex.id} forbids nothing"
        for n in ex.forbids:
            if n.split(".")[0] == "scipy" and "scipy" not in sys.modules:
                try:
                    import scipy  # noqa: F401
                except ImportError:
                    continue  # optional: forbidden only where SciPy is installed
            if "*" not in n:  # a pattern may match nothing yet (a future name); an exact name must exist
                assert resolve(n), f"{ex.id}: forbidden name {n!r} does not resolve (renamed?)"
        assert any(resolve(n) for n in ex.forbids if n.startswith("quantlab."))


def test_allowed_helpers_stay_allowed():
    q = Q.format(extra="", body="np.clip(np.round(r / s + z), *ql.qrange(8)) if (q_min, q_max) == "
                               "ql.qrange(8) else np.clip(np.round(r / s + z), q_min, q_max)")
    assert run_exercise(define(q, "quantize")).passed
    pcs = ("def per_channel_scale(w, bits, axis=0):\n"  # range_of is per_channel_minmax's answer, not this one's
           "    lo, hi = ql.range_of(torch.from_numpy(w), ql.PerChannel(axis))\n"
           "    return (torch.maximum(-lo, hi) / (2 ** (bits - 1) - 1)).numpy()\n")
    assert run_exercise(define(pcs, "per_channel_scale")).passed


def _originals():
    import torch.ao.quantization.observer as obs

    return {"ql.quantize": ql.quantize, "linear.quantize": quantlab.linear.quantize,
            "granularity.quantize": quantlab.granularity.quantize, "tq": torch.quantize_per_tensor,
            "obs": obs.MinMaxObserver.__dict__["calculate_qparams"], "cal": quantlab.calibration.kl_divergence,
            "engine": quantlab.engine.requant_multiplier, "profile": sys.getprofile()}


@pytest.mark.parametrize("body", [
    "ql.quantize(r, s, z, q_min, q_max)",           # raises ForbiddenCall
    "1 / 0",                                        # an ordinary exception
    "[x for x in iter(int, 1)]",                    # an endless loop: a timeout
])
def test_everything_is_restored_after_exception_and_timeout(body):
    before = _originals()
    res = run_exercise(define(Q.format(extra="", body=body), "quantize"), timeout=0.3)
    assert res.status in ("failed", "timeout")
    assert _originals() == before
    assert ql.quantize is quantlab.linear.quantize  # the library works again afterwards
    assert int(ql.quantize(1.0, 0.1, 0, -8, 7)) == 7


def test_reference_and_expected_outputs_are_unaffected():
    cases = REGISTRY["quantize"].prepared_cases()
    run_exercise(define(Q.format(extra="", body="ql.quantize(r, s, z, q_min, q_max)"), "quantize"))
    for c in cases:  # expected outputs were computed before any learner code ran; still the library's
        np.testing.assert_array_equal(c.expected, quantlab.linear.quantize(*c.args))
    assert run_exercise(define(Q.format(extra="", body="np.clip(np.round(r / s + z), q_min, q_max)"),
                               "quantize")).passed


def test_guard_records_a_captured_call_and_does_not_leak():
    captured = quantlab.linear.quantize
    g = Guard("quantize", ["quantlab.linear.quantize"])
    with g.active():
        assert ql.quantize is not captured
        out = captured(1.0, 0.1, 0, -8, 7)  # a reference taken before: runs, but is seen
        with pytest.raises(ForbiddenCall):
            ql.quantize(1.0, 0.1, 0, -8, 7)
    assert int(out) == 7 and g.violation and "quantlab.quantize" in g.violation
    assert ql.quantize is captured and sys.getprofile() is None


def test_check_prints_the_reason(capsys):
    res = check(define(Q.format(extra="", body="ql.quantize(r, s, z, q_min, q_max)"), "quantize"))
    out = capsys.readouterr().out
    assert not res.passed and "may not call `quantlab.quantize`" in out and "0/3 points" in out


def test_cli_refuses_forbidden_calls(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    srcs = ["from quantlab.linear import quantize as qz\n" + Q.format(extra="", body="qz(r, s, z, q_min, q_max)"),
            "def dequantize(q, s, z):\n    return ql.dequantize(q, s, z)\n",
            "import numpy as np\ndef symmetric_params(r_min, r_max, q_min, q_max):\n"
            "    return max(-r_min, r_max) / ((q_max - q_min) / 2), 0\n"]
    for src in srcs:
        c = nbformat.v4.new_code_cell(src)
        c.metadata["tags"] = ["exercise"]
        nb.cells.append(c)
    path = tmp_path / "01_cheat.ipynb"
    nbformat.write(nb, str(path))
    assert main([str(path), "--json"]) == 0
    ex = {e["id"]: e for e in json.loads(capsys.readouterr().out)["notebooks"][0]["exercises"]}
    assert ex["quantize"]["status"] == "failed" and "may not call `quantlab.quantize`" in ex["quantize"]["feedback"]
    assert ex["dequantize"]["status"] == "failed" and "quantlab.dequantize" in ex["dequantize"]["feedback"]
    assert ex["symmetric_params"]["passed"]
