"""The reference (fractional) merge rule vs a literal loop of NVIDIA's procedure; bad input; device rule;
flatten_zero_bin and divergence_curve; the lab 05 explorer's marker at its curve's minimum.

nvidia-modelopt is not installed here (it pulls pulp, omegaconf, pydantic, nvidia-ml-py, ...), so
``ref_amax`` below is its ``_compute_amax_entropy`` (modelopt/torch/quantization/calib/histogram.py)
written out as a plain loop, with scipy.stats.entropy written out too (scipy is not a dependency).
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from quantlab import EPS
from quantlab import calibration as cal
from quantlab.observers import MinMaxObserver

# ---------------------------------------------------------------------------------------------------
# Literal references


def ref_entropy(pk, qk):
    """scipy.stats.entropy(pk, qk): normalise both, sum of rel_entr (x log(x/y); inf where x > 0 = y)."""
    pk, qk = pk / pk.sum(), qk / qk.sum()
    tot = 0.0
    for x, y in zip(pk, qk, strict=True):
        if x > 0 and y > 0:
            tot += x * math.log(x / y)
        elif x > 0:
            return math.inf
    return tot


def ref_merge(bins_i, nbins):
    """NVIDIA's merge-and-expand of bins_i onto nbins levels (linspace boundaries, np.digitize)."""
    i = len(bins_i)
    space = np.linspace(0, i, num=nbins + 1)
    digitized = np.digitize(range(i), space) - 1
    digitized[bins_i == 0] = -1
    counts = np.zeros(nbins)
    for idx, dg in enumerate(digitized):
        if dg != -1:
            counts[dg] += bins_i[idx]
    for key, val in Counter(digitized).items():
        if key != -1:
            counts[key] = counts[key] / val
    new = np.zeros(i)
    for idx, dg in enumerate(digitized):
        if dg != -1:
            new[idx] = counts[dg]
    return new


def ref_amax(calib_hist, edges, num_bits, unsigned, start_bin=128):
    """modelopt's _compute_amax_entropy, one candidate at a time: (amax, divergences)."""
    bins = np.array(calib_hist, dtype=np.float64)
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divs = []
    for i in range(start_bin, len(bins) + 1):
        new = ref_merge(bins[:i], nbins)
        reference = np.array(bins[:i])
        reference[-1] += np.sum(bins[i:])
        divs.append(ref_entropy(reference, new))
    divs = np.array(divs)
    last_argmin = len(divs) - 1 - np.argmin(divs[::-1])
    return edges[last_argmin + start_bin], divs


def data(name, n=40_000, seed=0):
    rng = np.random.default_rng(seed)
    return {"gauss": rng.normal(0, 1, n), "laplace": rng.laplace(0, 1, n), "exponential": rng.exponential(1, n)}[name]


# ---------------------------------------------------------------------------------------------------
# The reference rule


@pytest.mark.parametrize("name", ["gauss", "laplace", "exponential"])
@pytest.mark.parametrize("unsigned", [False, True])
def test_kl_threshold_is_nvidias_amax(name, unsigned):
    h, e = cal.histogram(torch.from_numpy(data(name)), 512, absolute=True)
    amax, divs = ref_amax(h, e, 8, unsigned)
    res = cal.kl_threshold(cal.flatten_zero_bin(h, e), e, bits=8, signed=not unsigned)
    assert abs(res.threshold - amax) <= (e[1] - e[0]) + 1e-12  # the promise: within one bin (here: equal)
    assert res.threshold == amax
    assert res.thresholds[0] == e[128]  # NVIDIA's start_bin, also for 256 unsigned levels
    np.testing.assert_array_equal(np.isinf(res.divergences), np.isinf(divs))
    fin = np.isfinite(divs)
    np.testing.assert_allclose(res.divergences[fin], divs[fin], rtol=1e-9, atol=1e-12)
    lo, hi = cal.calibrate_range(torch.from_numpy(data(name)), "kl", 8, symmetric=True, signed=not unsigned,
                                 bins=512)
    assert hi == amax and lo == (0.0 if unsigned else -amax)


@pytest.mark.parametrize("i,n", [(8, 4), (12, 8), (100, 16), (37, 32), (5, 8), (300, 128)])
def test_fractional_quantize_histogram_is_nvidias_merge(i, n):
    rng = np.random.default_rng(i)
    p = rng.integers(0, 4, i).astype(float)
    p[0] = 1.0
    q = cal.quantize_histogram(p, n, merge="fractional")
    np.testing.assert_allclose(q, ref_merge(p, n), rtol=1e-12)
    assert q.sum() == pytest.approx(p.sum()) and ((q > 0) == (p > 0)).all()


def literal_curve(h, a, ends, n, metric, merge):
    """D(P_b || Q_b) one candidate at a time, from the definitions (P with both folds)."""
    smooth = merge == "integer"
    out = []
    for b in ends:
        P = h[a:b].copy()
        P[0] += h[:a].sum()
        P[-1] += h[b:].sum()
        Q = cal.quantize_histogram(h[a:b], n, merge) if h[a:b].sum() > 0 else np.zeros(b - a)
        P, Q = P / P.sum(), Q / max(Q.sum(), 1e-300)

        def kl(x, y):
            t = 0.0
            for xi, yi in zip(x, y, strict=True):
                if xi > 0:
                    t += math.inf if (yi <= 0 and not smooth) else xi * math.log(xi / max(yi, 1e-10))
            return t

        m = (P + Q) / 2
        d = {"kl": kl(P, Q), "symmetric_kl": kl(P, Q) + kl(Q, P), "js": 0.5 * kl(P, m) + 0.5 * kl(Q, m)}
        out.append(d[metric])
    return np.array(out)


@pytest.mark.parametrize("merge", cal.MERGE_RULES)
@pytest.mark.parametrize("metric", cal.METRICS)
@pytest.mark.parametrize("start", [0, 7])
def test_divergence_curve_equals_literal_loop(merge, metric, start):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.5, 1, 5_000), [-5.0, 7.0, 7.5]])
    h, e = cal.histogram(torch.from_numpy(x), 160)
    ends = np.arange(start + 40, 161, 3)  # includes ends whose last bin is empty (folded mass on 0 counts)
    r, d = cal.divergence_curve(h, e, 16, metric, start=start, ends=ends, merge=merge)
    np.testing.assert_array_equal(r, e[ends])
    ref = literal_curve(h, start, ends, 16, metric, merge)
    np.testing.assert_array_equal(np.isinf(d), np.isinf(ref))
    np.testing.assert_allclose(d[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-9, atol=1e-12)
    # default ends: from start + n_levels (integer) or start + 128 (fractional; here all 160 - start bins)
    r_all, _ = cal.divergence_curve(h, e, 16, metric, start=start, merge=merge)
    assert r_all[0] == e[start + (16 if merge == "integer" else min(128, 160 - start))] and r_all[-1] == e[-1]


def test_divergence_curve_is_kl_thresholds_curve():
    h, e = cal.histogram(torch.from_numpy(np.abs(data("laplace"))), 1024, absolute=True)
    h = cal.flatten_zero_bin(h, e)
    for merge in cal.MERGE_RULES:
        res = cal.kl_threshold(h, e, 6, signed=False, merge=merge)
        r, d = cal.divergence_curve(h, e, 64, "kl", merge=merge)
        np.testing.assert_array_equal(r, res.thresholds)
        np.testing.assert_array_equal(d, res.divergences)


def test_flatten_zero_bin():
    e = np.linspace(-2, 2, 9)  # 0 is the left edge of bin 4
    h = np.array([1.0, 2, 3, 4, 100, 6, 7, 8])
    np.testing.assert_array_equal(cal.flatten_zero_bin(h, e), [1, 2, 3, 4, 5, 6, 7, 8])  # mean of 4 and 6
    assert h[4] == 100  # a copy
    h_abs, e_abs = np.array([50.0, 3, 1]), np.array([0.0, 1, 2, 3])
    np.testing.assert_array_equal(cal.flatten_zero_bin(h_abs, e_abs), [3, 3, 1])  # NVIDIA: bins[0] = bins[1]
    pos = np.array([5.0, 1, 1])
    np.testing.assert_array_equal(cal.flatten_zero_bin(pos, [1.0, 2, 3, 4]), pos)  # 0 outside: unchanged
    spike = np.array([0.0, 9, 0])
    np.testing.assert_array_equal(cal.flatten_zero_bin(spike, [-1.5, -0.5, 0.5, 1.5]), spike)  # all mass there
    neg = np.array([1.0, 2, 30])  # data <= 0: 0 is the right edge of the last bin
    np.testing.assert_array_equal(cal.flatten_zero_bin(neg, [-3.0, -2, -1, 0]), [1, 2, 2])
    with pytest.raises(ValueError, match="bin_edges"):
        cal.flatten_zero_bin(h, e[:-1])


# ---------------------------------------------------------------------------------------------------
# Data that never goes above 0, and the promised edge cases


@pytest.mark.parametrize("merge", cal.MERGE_RULES)
@pytest.mark.parametrize("method", cal.METHODS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_and_non_positive_data(merge, method, symmetric):
    zeros = torch.zeros(1000)
    p = cal.calibrate(zeros, method, bits=8, symmetric=symmetric, merge=merge)
    assert float(p.s) == EPS and int(p.z) in (0, p.q_min)
    neg = torch.full((500,), -2.5)
    p = cal.calibrate(neg, method, bits=8, symmetric=symmetric, merge=merge)
    assert torch.isfinite(p.s) and p.s > 0 and p.q_min <= int(p.z) <= p.q_max
    if not symmetric:  # [-2.5, 0] exactly: z = q_max, -2.5 on q_min
        assert float(p.s) == pytest.approx(2.5 / 255) and int(p.z) == 255
    one = cal.calibrate(torch.tensor([1.5]), method, bits=1 if method in ("minmax", "percentile", "mse") else 8)
    assert torch.isfinite(one.s)


@pytest.mark.parametrize("merge", cal.MERGE_RULES)
@pytest.mark.parametrize("metric", cal.METRICS)
def test_kl_range_mirrors_non_positive_data(merge, metric):
    x = -np.abs(data("gauss", 20_000))
    x[:2] = [-9.0, -7.0]
    h, e = cal.histogram(torch.from_numpy(x), 512)
    res = cal.kl_range(h, e, bits=6, metric=metric, merge=merge)
    mirror = cal.kl_range(h[::-1].copy(), -e[::-1], bits=6, metric=metric, merge=merge)
    assert (res.r_min, res.r_max) == (-mirror.r_max, -mirror.r_min)
    assert res.r_max == e[-1] <= 0 and -9.0 < res.r_min < -2.0  # 0 is added by qparams_from_range
    for batch in (torch.zeros(64, 1, 4, 4), torch.full((64,), -1.0)):
        lo, hi = cal.calibrate_range(batch, metric, merge=merge)
        assert lo <= 0.0 == hi


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument

H, E = cal.histogram(torch.randn(2000, generator=torch.Generator().manual_seed(0)), 256, absolute=True)
X = torch.randn(500, generator=torch.Generator().manual_seed(1))
BAD = [
    (cal.histogram, (X,), {"bins": 0}, ValueError, "bins"),
    (cal.histogram, (torch.tensor([1.0, float("nan")]),), {}, ValueError, "NaN"),
    (cal.histogram, (torch.arange(5),), {}, TypeError, "floating"),
    (cal.histogram, (torch.empty(0),), {}, ValueError, "empty"),
    (cal.abs_histogram, (H, E[:-1]), {}, ValueError, "bin_edges"),
    (cal.abs_histogram, (H, E), {"bins": -3}, ValueError, "bins"),
    (cal.abs_histogram, (H, None), {}, TypeError, "bin_edges"),
    (cal.flatten_zero_bin, (-H, E), {}, ValueError, "negative"),
    (cal.kl_divergence, ([1.0, 2.0], [1.0]), {}, ValueError, "same shape"),
    (cal.kl_divergence, ([0.0, 0.0], [1.0, 1.0]), {}, ValueError, "no mass"),
    (cal.divergence, ([1.0], [1.0], "kld"), {}, ValueError, "metric must be one of"),
    (cal.quantize_histogram, ([1.0, 2.0], 4), {}, ValueError, "n_levels"),
    (cal.quantize_histogram, ([1.0, 2.0], 0), {"merge": "fractional"}, ValueError, "n_levels"),
    (cal.quantize_histogram, ([1.0, 2.0], 1), {"merge": "floor"}, ValueError, "merge must be one of"),
    (cal.quantize_histogram, ([[1.0, 2.0]], 1), {}, ValueError, "1-D"),
    (cal.kl_threshold, (H, E), {"bits": 17}, ValueError, "bits"),
    (cal.kl_threshold, (H, E), {"bits": 1}, ValueError, "bits >= 2"),
    (cal.kl_threshold, (H, E), {"bits": 2.5}, TypeError, "bits"),
    (cal.kl_threshold, (H, E), {"merge": "nvidia"}, ValueError, "merge must be one of"),
    (cal.kl_threshold, (H, E), {"start_bin": 0}, ValueError, "start_bin"),
    (cal.kl_threshold, (H, E), {"start_bin": 257}, ValueError, "start_bin"),
    (cal.kl_threshold, (H[:64], E[:65]), {"bits": 8}, ValueError, "n_levels"),
    (cal.kl_threshold, (np.where(np.arange(256) == 3, np.nan, H), E), {}, ValueError, "NaN"),
    (cal.kl_threshold, (H, E - 1), {}, ValueError, "abs_histogram"),
    (cal.kl_range, (H, E), {"bits": 9}, ValueError, "2\\^bits"),
    (cal.kl_range, (H, E), {"n_candidates": 1}, ValueError, "n_candidates"),
    (cal.kl_range, (H, E), {"metric": "entropy"}, ValueError, "metric must be one of"),
    (cal.divergence_curve, (H, E, 16), {"ends": [3], "merge": "integer"}, ValueError, "ends must lie"),
    (cal.divergence_curve, (H, E, 16), {"ends": [0, 300]}, ValueError, "ends must lie"),
    (cal.divergence_curve, (H, E, 16), {"start": 256}, ValueError, "start"),
    (cal.divergence_curve, (H, E, 300), {"merge": "integer"}, ValueError, "n_levels"),
    (cal.percentile_range, (X,), {"pct": 40}, ValueError, "pct"),
    (cal.percentile_range, (X,), {"pct": float("nan")}, ValueError, "pct"),
    (cal.mse_range, (X,), {"bits": 0}, ValueError, "bits"),
    (cal.mse_range, (X,), {"n_candidates": 0}, ValueError, "n_candidates"),
    (cal.minmax_range, (torch.tensor([float("inf")]),), {}, ValueError, "NaN/inf"),
    (cal.calibrate, (X, "entropy"), {}, ValueError, "method must be one of .*'minmax'"),
    (cal.calibrate, (X, "kl"), {"bits": 20}, ValueError, "bits"),
    (cal.calibrate, (X, "kl"), {"bins": 0}, ValueError, "bins"),
    (cal.calibrate, (X, "kl"), {"merge": "x"}, ValueError, "merge"),
    (cal.calibrate, ((H, E[:10]), "kl"), {}, ValueError, "bin_edges"),
    (cal.calibrate, ("not data", "kl"), {}, TypeError, "x must be"),
    (cal.calibrate_model, ([X], "kl"), {}, TypeError, "acts"),
    (cal.calibrate_model, ({"relu9": torch.tensor([float("nan")])}, "kl"), {}, ValueError, "relu9"),
]


@pytest.mark.parametrize("fn,args,kw,err,msg", BAD, ids=[f"{b[0].__name__}-{k}" for k, b in enumerate(BAD)])
def test_bad_input_is_refused_clearly(fn, args, kw, err, msg):
    with pytest.raises(err, match=msg):
        fn(*args, **kw)


def test_min_max_observer_with_a_histogram_method():
    obs = MinMaxObserver()
    obs(X)
    with pytest.raises(TypeError, match="HistogramObserver"):
        cal.calibrate(obs, "kl")


def test_fake_quantize_activations_bad_input():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.raises(ValueError, match="relu7"):
        with cal.fake_quantize_activations(model, {"relu7": None}):
            pass
    with pytest.raises(TypeError, match="qparams"):
        with cal.fake_quantize_activations(model, [1]):
            pass
    with pytest.raises((TypeError, ValueError), match="model"):
        with cal.fake_quantize_activations(None, {}):
            pass


def test_device_tensors_are_accepted(device):
    """On each device (cpu, the simulated cpu:1, cuda when present): the same histogram and (s, z) as on the CPU,
    (s, z) on the data's device, and fake-quantized activations on the model's device."""
    from simdevice import is_on

    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    h, e = cal.histogram(x.to(device), absolute=True)
    assert h.sum() == 10_000 and np.array_equal(h, cal.histogram(x, absolute=True)[0])
    for method in cal.METHODS:
        p = cal.calibrate(x.to(device), method, bits=8)
        ref = cal.calibrate(x, method, bits=8)
        assert is_on(p.s.device, device) and is_on(p.z.device, device), method
        assert torch.equal(p.s.cpu(), ref.s) and torch.equal(p.z.cpu(), ref.z), method
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).to(device)
    inp = torch.randn(16, 4).to(device)
    qp = cal.calibrate_model(cal.collect_activations(model, inp), "kl", 4)
    with cal.fake_quantize_activations(model, qp):
        out = model(inp)
    assert is_on(out.device, device) and len(out.unique()) <= 16


# ---------------------------------------------------------------------------------------------------
# Lab 05: the explorer's KL curve, its dots, its marker and kl_threshold are one computation


def test_explorer_marker_sits_at_the_kl_curves_minimum():
    import matplotlib

    matplotlib.use("Agg")
    from quantlab.data import calibration_batch
    from quantlab.models import load_trained
    from quantlab.viz.calibration import CalibrationExplorer

    model = load_trained()
    x = calibration_batch(64, seed=0)
    acts = cal.collect_activations(model, x)
    acts["bn2 (signed)"] = cal.collect_activations(model, x, torch.nn.BatchNorm2d)["bn2"]
    ex = CalibrationExplorer(acts, bits=8)
    for layer in acts:
        for bits in range(2, 9):
            ex.controls["layer"].value, ex.controls["bits"].value = layer, bits
            d = ex._setup(layer, bits, "symmetric")
            r, D = ex.curves["KL"].get_data()
            D = np.asarray(D, dtype=float)
            t_min = r[len(D) - 1 - np.nanargmin(D[::-1])]  # the plotted curve's (last) minimum
            assert d["marks"]["kl"] == t_min, (layer, bits)
            signed = layer.startswith("bn2")
            lo, hi = cal.calibrate_range(acts[layer], "kl", bits, symmetric=True, signed=signed)
            assert hi == t_min, (layer, bits)  # = what calibrate() picks for this layer
            k = int(np.argmin(np.abs(r - ex.dots["KL"].get_xdata()[0])))
            assert ex.dots["KL"].get_ydata()[0] == D[k] or np.isnan(D[k])
