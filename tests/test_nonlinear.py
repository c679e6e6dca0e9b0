"""Tests for quantlab.nonlinear: each checked against a brute-force search, a literal loop or a published table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quantlab as ql
from quantlab.nonlinear import (
    codebook_dequantize,
    codebook_dot,
    codebook_size_bytes,
    fake_nf,
    fake_pow2,
    finetune_centroids,
    kmeans_books,
    kmeans_codebook,
    kmeans_init,
    linear_int_dot,
    lloyd_step,
    nf_dequantize,
    nf_quantize,
    nf_size_bytes,
    normal_float_levels,
    pow2_dequantize,
    pow2_int_weights,
    pow2_levels,
    pow2_quantize,
    quantize_model_weights,
    quantize_weight,
    shift_add_dot,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# The 16 NF4 levels as published (QLoRA, Dettmers et al. 2023, appendix; bitsandbytes' NF4 table).
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------------------------ power of two


def _brute_pow2(r: torch.Tensor, s: torch.Tensor, bits: int, rounding: str) -> torch.Tensor:
    """Literal nearest-level search over every signed level; returns r_hat (float64)."""
    K = 2 ** (bits - 1) - 1
    rr, ss = r.double(), s.double().expand_as(r).reshape(-1)
    out = torch.empty(r.numel(), dtype=torch.float64)
    for i, (v, sv) in enumerate(zip(rr.reshape(-1).tolist(), ss.tolist())):
        if rounding == "linear":
            levels = [0.0] + [sign * sv * 2.0 ** (m - K) for m in range(1, K + 1) for sign in (1, -1)]
            levels.sort(key=abs)  # ties -> the smaller magnitude wins (first in this order)
            out[i] = min(levels, key=lambda lv: abs(v - lv))
        else:
            a = min(abs(v) / sv, 1.0)
            la = math.log2(a) if a > 0 else -math.inf
            exps = list(range(-K, 1))  # exponent -K stands for the zero level
            e = min(exps, key=lambda e: (abs(la - e), e))  # log2(0) = -inf: all tie, zero (e = -K) wins
            out[i] = 0.0 if e == -K else math.copysign(sv * 2.0**e, v)
    return out.reshape(r.shape)


@pytest.mark.parametrize("rounding", ["linear", "log"])
@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_pow2_matches_brute_force_nearest_level(rounding, bits):
    r = torch.cat([_rand(300, seed=bits), torch.tensor([0.0, -0.0])]) * 0.3
    q, s = pow2_quantize(r, bits, rounding=rounding)
    r_hat = pow2_dequantize(q, s, bits)
    torch.testing.assert_close(r_hat.double(), _brute_pow2(r, s, bits, rounding), rtol=0, atol=0)


@pytest.mark.parametrize("rounding", ["linear", "log"])
def test_pow2_per_channel_is_per_tensor_on_each_channel(rounding):
    w = _rand(4, 3, 5, seed=1) * torch.tensor([0.1, 1.0, 5.0, 0.01]).view(4, 1, 1)
    q, s = pow2_quantize(w, 4, ql.PerChannel(0), rounding)
    assert s.shape == (4, 1, 1)
    for c in range(4):
        qc, sc = pow2_quantize(w[c], 4, rounding=rounding)
        assert torch.equal(q[c], qc) and float(s[c]) == float(sc)
    torch.testing.assert_close(pow2_dequantize(q, s, 4).double(), _brute_pow2(w, s, 4, rounding), rtol=0, atol=0)


def test_pow2_rounding_domains_differ_exactly_between_sqrt2_and_1_5():
    bits, K = 4, 7
    s = 1.0
    a = torch.linspace(2**-8, 1.0, 20001, dtype=torch.float64).float()
    r = torch.cat([a, torch.tensor([1.0])])
    lin = pow2_dequantize(pow2_quantize(r, bits, rounding="linear", s=s)[0], s, bits)
    log = pow2_dequantize(pow2_quantize(r, bits, rounding="log", s=s)[0], s, bits)
    differ = lin != log
    # predicted: a in (sqrt2, 1.5)·2^j for j = -K+1..-1, or a in (2^-K, sqrt2·2^-K) (zero vs smallest level)
    aa = r.double()
    j = torch.floor(torch.log2(aa))
    frac = aa / 2**j
    pred = ((frac > math.sqrt(2)) & (frac <= 1.5) & (j >= 1 - K)) | ((aa > 2.0**-K) & (aa < math.sqrt(2) * 2.0**-K))
    assert torch.equal(differ, pred) and int(differ.sum()) > 1000
    zero_zone = aa < math.sqrt(2) * 2.0**-K
    assert bool((log[differ & ~zero_zone] > lin[differ & ~zero_zone]).all())  # log rounds up between levels
    assert bool((log[differ & zero_zone] == 0).all())  # and flushes more small values to zero


def test_pow2_grid_levels_and_codes():
    assert pow2_levels(2).tolist() == [-1.0, 0.0, 1.0]
    assert len(pow2_levels(4)) == 15 and pow2_levels(4)[8] == 2.0**-6
    q, s = pow2_quantize(torch.tensor([-4.0, 4.0, 1.0, 0.0]), 3)
    assert q.tolist() == [-3, 3, 1, 0] and q.dtype == torch.int32 and float(s) == 4.0


def test_pow2_numpy_in_numpy_out():
    q, s = pow2_quantize(np.array([0.5, -1.0], dtype=np.float32), 3)
    assert isinstance(q, np.ndarray) and isinstance(pow2_dequantize(q, s, 3), np.ndarray)


@pytest.mark.parametrize("bits", [0, 1, 9, 2.5])
def test_pow2_bits_out_of_range(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        pow2_quantize(torch.ones(3), bits)


def test_pow2_bad_input_and_edge_cases():
    with pytest.raises(ValueError, match="NaN/inf"):
        pow2_quantize(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match="rounding"):
        pow2_quantize(torch.ones(2), 4, rounding="ln")
    with pytest.raises(ValueError, match="s must be"):
        pow2_quantize(torch.ones(2), 4, s=0.0)
    with pytest.raises(ValueError, match="codes"):
        pow2_dequantize(torch.tensor([8]), 1.0, 4)
    zeros = fake_pow2(torch.zeros(5), 4)
    assert torch.equal(zeros, torch.zeros(5))
    const = torch.full((6,), -0.37)
    assert torch.equal(fake_pow2(const, 4), const)  # s = |c|, every value on the top level


# ---------------------------------------------------------------------------------------- k-means


def _slow_lloyd(x: list[float], c: list[float]):
    codes = [min(range(len(c)), key=lambda j: (abs(v - c[j]), j)) for v in x]
    new = []
    for j in range(len(c)):
        pts = [v for v, k in zip(x, codes) if k == j]
        new.append(sum(pts) / len(pts) if pts else c[j])
    return sorted(new), codes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=40), st.integers(1, 3))
def test_lloyd_step_equals_a_literal_loop(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    c0 = kmeans_init(x[None], 2**bits, "linear")
    new, codes = lloyd_step(x[None], c0)
    ref_new, ref_codes = _slow_lloyd([float(v) for v in x.double()], c0[0].double().tolist())
    assert codes[0].tolist() == ref_codes
    torch.testing.assert_close(new[0].double(), torch.tensor(ref_new, dtype=torch.float64).float().double(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init", ["linear", "k-means++"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_converged_points_on_nearest_centroid_and_centroids_are_means(init, seed):
    x = torch.cat([_rand(60, seed=seed), _rand(30, seed=seed + 10) * 0.1 + 3])
    cb = kmeans_codebook(x, bits=2, init=init, iters=200, seed=seed)
    c, codes = cb.centroids[0].double(), cb.codes
    d = (x.double()[:, None] - c[None, :]).abs()
    assert bool((d.gather(1, codes[:, None])[:, 0] <= d.min(1).values).all())  # brute force: nearest
    for j in range(cb.k):
        pts = x.double()[codes == j]
        if len(pts):
            assert float(c[j]) == pytest.approx(float(pts.mean()), abs=1e-6)  # mean of its own points


def test_kmeans_beats_linear_grid_and_kmeanspp_is_seeded():
    x = _rand(5000, seed=3)
    lin = ql.fake_quantize_tensor(x, 3, symmetric=True, narrow=True)
    km = kmeans_codebook(x, 3).dequantize()
    assert ql.sqnr_db(x, km) > ql.sqnr_db(x, lin) + 3
    a = kmeans_init(x[None], 8, "k-means++", seed=5)
    assert torch.equal(a, kmeans_init(x[None], 8, "k-means++", seed=5))
    assert not torch.equal(a, kmeans_init(x[None], 8, "k-means++", seed=6))
    assert all(bool((x == v).any()) for v in a[0])  # k-means++ picks data points


def test_kmeans_per_channel_is_per_tensor_on_each_channel():
    w = _rand(3, 4, 6, seed=4) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    cb = kmeans_codebook(w, 2, ql.PerChannel(0))
    assert cb.centroids.shape == (3, 4) and cb.codes.shape == w.shape
    for ch in range(3):
        one = kmeans_codebook(w[ch], 2)
        assert torch.equal(cb.codes[ch], one.codes)
        torch.testing.assert_close(cb.centroids[ch], one.centroids[0])
    w1 = _rand(4, 5, seed=8)  # axis 1
    cb1 = kmeans_codebook(w1, 1, ql.PerChannel(1))
    assert cb1.centroids.shape == (5, 2)
    torch.testing.assert_close(cb1.dequantize()[:, 2], kmeans_codebook(w1[:, 2], 1).dequantize())


def test_kmeans_fewer_distinct_values_than_k_is_exact_and_never_nan():
    for init in ("linear", "k-means++"):
        x = torch.tensor([1.0, 1.0, -2.0, 5.0, 5.0])  # 3 distinct values, k = 8
        cb = kmeans_codebook(x, 3, init=init)
        assert torch.equal(cb.dequantize(), x) and torch.isfinite(cb.centroids).all()
        for const in (torch.zeros(7), torch.full((7,), 0.3)):
            assert torch.equal(kmeans_codebook(const, 2, init=init).dequantize(), const)


def test_kmeans_empty_cluster_keeps_its_centroid():
    x = torch.tensor([[0.0, 0.1, 0.9, 1.0]])
    new, codes = lloyd_step(x, torch.tensor([[0.0, 0.5, 0.55, 1.0]]))
    assert new[0, 1:3].tolist() == pytest.approx([0.5, 0.55]) and not bool((codes == 1).any())


def test_kmeans_bad_input():
    with pytest.raises(ValueError, match="bits"):
        kmeans_codebook(torch.ones(4), 9)
    with pytest.raises(ValueError, match="bits"):
        kmeans_codebook(torch.ones(4), 0)
    with pytest.raises(ValueError, match="NaN/inf"):
        kmeans_codebook(torch.tensor([1.0, float("inf")]), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans_codebook(torch.ones(4), 2, init="random")
    with pytest.raises(ValueError, match="iters"):
        kmeans_codebook(torch.ones(4), 2, iters=-1)
    with pytest.raises(TypeError, match="granularity"):
        kmeans_codebook(torch.ones(4, 4), 2, ql.PerGroup(2))
    with pytest.raises(ValueError, match="codes"):
        codebook_dequantize(torch.tensor([4]), torch.zeros(4))


def test_codebook_storage_counts_codes_and_codebook():
    w = _rand(64, 9, seed=0)
    cb = kmeans_codebook(w, 2, ql.PerChannel(0))
    assert cb.size_bytes() == 64 * 9 * 2 / 8 + 64 * 4 * 4 == codebook_size_bytes(576, 2, 64)
    _, n_bytes, lookups = quantize_weight(w, "kmeans", 2)
    assert (n_bytes, lookups) == (576 * 2 / 8 + 4 * 4, 576)  # one codebook of 4 FP32 centroids


# -------------------------------------------------------------------------------------------- NF4


def test_nf4_levels_match_the_published_table():
    levels = normal_float_levels(4)
    # 3e-7: the published values are float32 roundings of scipy's ppf with δ written as 0.9677083
    torch.testing.assert_close(levels, torch.tensor(NF4_PUBLISHED, dtype=torch.float64), rtol=0, atol=3e-7)
    assert levels.numel() == 16 and levels.unique().numel() == 16 and levels[7] == 0.0
    assert levels[0] == -1.0 and levels[-1] == 1.0
    for b in (2, 3, 5):  # the same construction at other bit-widths: 2^b levels, one exact zero
        lv = normal_float_levels(b)
        assert lv.numel() == 2**b and int((lv == 0).sum()) == 1 and lv.unique().numel() == 2**b


def test_nf_quantize_matches_brute_force_per_block():
    r = torch.cat([_rand(150, seed=6), torch.zeros(3)])  # 3 blocks of 64 (last one short), exact zeros
    codes, a = nf_quantize(r)
    assert a.shape == (3,)
    levels = normal_float_levels(4)
    for i, v in enumerate(r.tolist()):
        blk = r[(i // 64) * 64:(i // 64 + 1) * 64]
        absmax = float(blk.abs().max())
        assert float(a[i // 64]) == absmax
        dist = [abs(v / absmax - float(lv)) for lv in levels]
        assert int(codes[i]) == min(range(16), key=lambda j: (dist[j], j))
    r_hat = nf_dequantize(codes, a)
    assert bool((r_hat[r == 0] == 0).all())  # zero stays exactly zero
    assert bool((r_hat.abs().reshape(-1)[:128].reshape(2, 64).amax(1) == a[:2]).all())  # absmax exact


def test_nf_edge_cases_and_bad_input():
    assert torch.equal(fake_nf(torch.zeros(70)), torch.zeros(70))
    c = torch.full((10,), -1.5)
    assert torch.equal(fake_nf(c), c)
    with pytest.raises(ValueError, match="bits"):
        nf_quantize(torch.ones(3), 1)
    with pytest.raises(ValueError, match="block_size"):
        nf_quantize(torch.ones(3), 4, 0)
    with pytest.raises(ValueError, match="NaN/inf"):
        nf_quantize(torch.tensor([float("nan")]))
    assert nf_size_bytes(128, 4) == 64 + 8


# ------------------------------------------------------------------------------------- integer MACs


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_shift_add_dot_equals_the_multiply(bits, seed):
    g = torch.Generator().manual_seed(seed)
    K = 2 ** (bits - 1) - 1
    q = torch.randint(-K, K + 1, (3, 40), generator=g)
    x = torch.randint(-128, 128, (40,), generator=g)
    w_int = pow2_int_weights(q, bits)
    assert torch.equal(shift_add_dot(q, x, bits), (w_int * x).sum(-1))  # the multiply, done for real
    # and w_int really is the dequantized weight over s·2^(1-K)
    s = 0.37
    torch.testing.assert_close(w_int.double() * s * 2.0 ** (1 - K), pow2_dequantize(q, s, bits).double())


def test_linear_dot_factors_the_scale_out_and_codebook_needs_lookups():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (50,), generator=g)
    w = _rand(50, seed=2)
    q, p = ql.quantize_tensor(w, 4, symmetric=True, narrow=True)
    y_float = (ql.dequantize(q, p.s, p.z).double() * x.double()).sum()
    assert float(p.s) * int(linear_int_dot(q, int(p.z), x)) == pytest.approx(float(y_float), rel=1e-6)
    cb = kmeans_codebook(w, 2)
    y, lookups = codebook_dot(cb.codes, cb.centroids[0], x)
    assert lookups == 50 and float(y) == pytest.approx(float((cb.dequantize().double() * x).sum()), rel=1e-9)
    with pytest.raises(TypeError, match="integer"):
        shift_add_dot(torch.tensor([1]), torch.tensor([0.5]), 3)


# ------------------------------------------------------------------------------- model, fine-tuning


@pytest.fixture(scope="module")
def trained():
    from quantlab.models import load_trained

    return load_trained()


def test_quantize_model_weights_copies_and_names_the_layer(trained):
    before = trained.fc1.weight.clone()
    m, rep = quantize_model_weights(trained, "log", 3)
    assert torch.equal(trained.fc1.weight, before) and not torch.equal(m.fc1.weight, before)
    assert set(rep) == {"conv1", "conv2", "fc1", "fc2"}
    K = 3
    ratios = m.fc1.weight / m.fc1.weight.abs().max()
    assert set(torch.log2(ratios.abs()[ratios != 0]).round().unique().tolist()) <= {float(-e) for e in range(K)}
    with pytest.raises(ValueError, match="layer 'conv1'.*bits"):
        quantize_model_weights(trained, "nf", 1)
    with pytest.raises(ValueError, match="method"):
        quantize_weight(torch.ones(3), "mu-law", 4)


def test_finetune_centroids_sums_gradients_with_codes_fixed(trained):
    from quantlab.data import load_mnist

    x, y = load_mnist("train", n=64)
    books = kmeans_books(trained, 2)
    m1, books1, losses = finetune_centroids(trained, books, x, y, steps=1, lr=1e-4, batch_size=64)
    # independent reference: autograd through the lookup w = c[codes] gives the summed gradient
    import torch.nn.functional as F

    from quantlab.models import replace_layers

    cents = {n: b.centroids.clone().requires_grad_(True) for n, b in books.items()}

    def plain(name, layer):
        layer.weight.requires_grad_(False)
        return layer

    ref = replace_layers(trained, plain).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(64, (64,), generator=g)
    feats = x[idx]
    h = feats
    for name, layer in ref.named_children():
        if name in cents:
            w = cents[name][0][books[name].codes]
            h = F.conv2d(h, w, layer.bias, padding=1) if name.startswith("conv") else F.linear(h, w, layer.bias)
        else:
            h = layer(h)
    F.cross_entropy(h, y[idx]).backward()
    for n in books:
        torch.testing.assert_close(books1[n].centroids, (cents[n] - 1e-4 * cents[n].grad).detach(),
                                   rtol=1e-5, atol=1e-7)
        assert torch.equal(books1[n].codes, books[n].codes)
        torch.testing.assert_close(m1.get_submodule(n).weight, books1[n].dequantize())


def test_results_stay_on_the_tensors_device(device):
    r = _rand(200, seed=1).to(device)
    for method in ("linear", "log", "kmeans", "nf"):
        w_hat, _, _ = quantize_weight(r, method, 3)
        assert w_hat.device == r.device
    assert kmeans_codebook(r, 2, init="k-means++").codes.device == r.device
    assert pow2_quantize(r, 3)[0].device == r.device
