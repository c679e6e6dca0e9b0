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
from quantlab.grading.forbid import ForbiddenCall, Guard, installed, resolve

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

#: Packages quantlab depends on: names in them must always resolve (others are optional, see forbid.installed).
REQUIRED = ("quantlab", "torch", "numpy")

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
    # lab 03
    ("log_quantize", "from quantlab.nonlinear.log import fake_pow2\ndef log_quantize(r, bits):\n"
     "    return fake_pow2(r, bits, rounding='log')\n", "quantlab.nonlinear.fake_pow2"),
    ("log_quantize", "from quantlab.nonlinear import pow2_quantize, pow2_dequantize\ndef log_quantize(r, bits):\n"
     "    q, s = pow2_quantize(r, bits, rounding='log')\n    return pow2_dequantize(q, s, bits)\n",
     "quantlab.nonlinear.pow2_quantize"),
    ("log_quantize", "import quantlab.nonlinear as nl\ndef log_quantize(r, bits):\n"
     "    return nl.quantize_weight(torch.as_tensor(r), 'pow2', bits, rounding='log').numpy()\n",
     "quantlab.nonlinear.quantize_weight"),
    ("kmeans_step", "import quantlab.nonlinear as nl\ndef kmeans_step(x, centroids):\n"
     "    new, codes = nl.lloyd_step(torch.as_tensor(x)[None], torch.as_tensor(centroids)[None])\n"
     "    return new[0].numpy(), codes[0].numpy()\n", "quantlab.nonlinear.lloyd_step"),
    ("kmeans_step", "from quantlab.nonlinear.kmeans import nearest_index\ndef kmeans_step(x, centroids):\n"
     "    codes = nearest_index(torch.as_tensor(x), torch.as_tensor(centroids)).numpy()\n"
     "    new = np.array([x[codes == j].mean() if (codes == j).any() else c for j, c in enumerate(centroids)])\n"
     "    return new, codes\n", "quantlab.nonlinear.nearest_index"),
    # lab 06
    ("bias_correction", "import quantlab.correction as qc\ndef bias_correction(a_fp, a_q):\n"
     "    return qc.bias_correction_term(a_fp, a_q).numpy()\n", "quantlab.correction.bias_correction_term"),
    ("bias_correction", "from quantlab.correction import channel_mean\ndef bias_correction(a_fp, a_q):\n"
     "    return (channel_mean(a_fp) - channel_mean(a_q)).numpy()\n", "quantlab.correction.channel_mean"),
    ("weight_correction", "import quantlab.correction as qc\ndef weight_correction(w, w_hat):\n"
     "    return qc.weight_correction(w, w_hat).numpy()\n", "quantlab.correction.weight_correction"),
    ("weight_correction", "import quantlab.correction as qc\ndef weight_correction(w, w_hat):\n"
     "    zeta, v = qc.scale_shift(w, w_hat)\n    return (zeta * torch.as_tensor(w_hat) + v).numpy()\n",
     "quantlab.correction.scale_shift"),
    # lab 08
    ("pack_sign_bits", "from quantlab.packing import pack_signs\ndef pack_sign_bits(x):\n    return pack_signs(x)\n",
     "quantlab.packing.pack_signs"),
    ("pack_sign_bits", "import quantlab.packing as pk\ndef pack_sign_bits(x):\n    return pk.pack_negative(x < 0)\n",
     "quantlab.packing.pack_negative"),
    ("pack_sign_bits", "import quantlab.packing as pk\ndef pack_sign_bits(x):\n"
     "    b = pk.pack_bits(torch.as_tensor(np.concatenate([x < 0, np.zeros(-len(x) % 64, bool)]).astype(int)), 1, 0)\n"
     "    return b.numpy().view(np.uint64)\n", "quantlab.packing.pack_bits"),
    ("xnor_popcount_dot", "import quantlab.binary as qb\ndef xnor_popcount_dot(a_words, w_words, K):\n"
     "    return int(qb.xnor_gemm(a_words[None], w_words[None], K, backend='numpy')[0, 0])\n",
     "quantlab.binary.xnor_gemm"),
    ("xnor_popcount_dot", "from quantlab.packing import unpack_signs\ndef xnor_popcount_dot(a_words, w_words, K):\n"
     "    return int(unpack_signs(a_words, K) @ unpack_signs(w_words, K))\n", "quantlab.packing.unpack_signs"),
    ("binarize_with_alpha", "import quantlab.binary as qb\ndef binarize_with_alpha(w):\n"
     "    return qb.binarize_weights(w)\n", "quantlab.binary.binarize_weights"),
    ("binarize_with_alpha", "import quantlab.binary as qb\ndef binarize_with_alpha(w):\n"
     "    return qb.binary_weight_scale(w) * np.where(w >= 0, 1.0, -1.0)\n", "quantlab.binary.binary_weight_scale"),
    ("binarize_with_alpha", "from quantlab.binary import SignSTE\ndef binarize_with_alpha(w):\n"
     "    t = torch.as_tensor(w)\n"
     "    return (t.abs().mean(dim=tuple(range(1, t.ndim)), keepdim=True) * SignSTE.apply(t)).numpy()\n",
     "quantlab.binary.SignSTE.forward"),
])
def test_every_exercise_refuses_its_own_answer(name, src, shown):
    res = run_exercise(define(src, name))
    assert_refused(res, shown)


def test_every_exercise_declares_forbids_that_resolve():
    for ex in REGISTRY.values():
        assert ex.forbids, f"{ex.id} forbids nothing"
        for n in ex.forbids:
            if n.split(".")[0] not in REQUIRED and not installed(n):
                continue  # an optional library (SciPy, scikit-learn): forbidden only where it is installed
            if "*" not in n:  # a pattern may match nothing yet (a future name); an exact name must exist
                assert resolve(n), f"{ex.id}: forbidden name {n!r} does not resolve (renamed?)"
        assert any(resolve(n) for n in ex.forbids if n.startswith("quantlab."))


def test_optional_libraries_are_forbidden_only_where_installed(tmp_path, monkeypatch):
    """A forbidden name in a library that is not installed resolves to nothing and forbids nothing; once the
    library is importable, the same name is forbidden like any other."""
    assert not installed("optlib_for_test.cluster.kmeans") and resolve("optlib_for_test.cluster.kmeans") == []
    src = "def kmeans_step(x, centroids):\n    return kmeans(x, centroids)\n"
    g = Guard("kmeans_step", ["optlib_for_test.cluster.kmeans"])
    assert g.targets == []
    with g.active():  # nothing to patch: a no-op
        pass
    pkg = tmp_path / "optlib_for_test"
    (pkg / "cluster").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cluster" / "__init__.py").write_text("def kmeans(x, c):\n    return 'answer'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert installed("optlib_for_test.cluster.kmeans") and resolve("optlib_for_test.cluster.kmeans")
        from optlib_for_test.cluster import kmeans
        fn = define("from optlib_for_test.cluster import kmeans\n" + src, "kmeans_step")
        g = Guard("kmeans_step", ["optlib_for_test.cluster.kmeans"], fn)
        with g.active(), pytest.raises(ForbiddenCall, match="may not call `optlib_for_test.cluster.kmeans`"):
            fn(np.zeros(3), np.zeros(2))
        assert kmeans(1, 2) == "answer"  # restored
    finally:
        for m in [m for m in sys.modules if m.startswith("optlib_for_test")]:
            del sys.modules[m]


def test_helpers_the_new_exercises_do_not_ask_for_stay_allowed():
    """lab 03: the grid and s = max|r| (pow2_levels, pow2_scale); lab 08: popcount64 (np.bitwise_count does it)."""
    log = ("import quantlab.nonlinear as nl\ndef log_quantize(r, bits):\n"
           "    K = 2 ** (bits - 1) - 1\n    s = float(nl.pow2_scale(torch.as_tensor(r)))\n"
           "    a = np.abs(r.astype(np.float64)) / s\n"
           "    m = np.clip(np.round(np.log2(np.where(a > 0, a, 1e-300))) + K, 0, K)\n"
           "    return (np.sign(r) * s * 2.0 ** (m - K) * (m > 0)).astype(np.float32)\n")
    assert run_exercise(define(log, "log_quantize")).passed
    dot = ("from quantlab.binary_kernel import popcount64\ndef xnor_popcount_dot(a_words, w_words, K):\n"
           "    return K - 2 * int(popcount64(np.bitwise_xor(a_words, w_words)).sum())\n")
    assert run_exercise(define(dot, "xnor_popcount_dot")).passed


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
