"""quantlab.binary, quantlab.binary_kernel and the ±1 packing of quantlab.packing, against independent references:
float matrix products and F.conv2d of the ±1 tensors, literal bit loops, the closed-form STE gradient."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import quantlab.binary as qb
from quantlab import binary_kernel as bk
from quantlab.models import SmallCNN, find_layers
from quantlab.packing import n_words, pack_signs, unpack_signs

needs_numba = pytest.mark.skipif(not bk.HAVE_NUMBA, reason="numba not installed")


def signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- binarize, STE, α


def test_binarize_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    assert qb.binarize(x).tolist() == [-1, -1, 1, 1, 1, 1]          # -0.0 >= 0 too
    assert isinstance(qb.binarize(np.array([0.0])), np.ndarray)


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        qb.binarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        qb.binarize(torch.tensor([1, -1]))


def test_sign_ste_gradient_is_clipped_identity():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    g = torch.randn(601, dtype=torch.float64)
    qb.SignSTE.apply(x).backward(g)
    expected = g * (x.detach().abs() <= 1)                          # d hardtanh / dx
    assert torch.equal(x.grad, expected)
    h = x.detach().clone().requires_grad_(True)
    F.hardtanh(h).backward(g)                                        # torch's own clipped identity
    edge = x.detach().abs() == 1                                     # hardtanh: 0 at |x| = 1; ours passes it
    assert edge.sum() == 2 and torch.equal(x.grad[~edge], h.grad[~edge])


def test_alpha_is_mean_abs_per_output_channel_and_optimal():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3, 2, 2)).astype(np.float32)
    alpha = qb.binary_weight_scale(w)
    assert alpha.shape == (5, 1, 1, 1)
    for c in range(5):                                               # a literal loop
        assert np.isclose(alpha[c, 0, 0, 0], sum(abs(v) for v in w[c].ravel()) / w[c].size)
        b = np.where(w[c] >= 0, 1.0, -1.0)
        grid = np.linspace(0, 3, 3001)                               # brute force over α
        err = [((w[c] - a * b) ** 2).sum() for a in grid]
        assert abs(grid[int(np.argmin(err))] - alpha[c, 0, 0, 0]) <= 1e-3
    w_hat = qb.binarize_weights(w)
    assert np.allclose(w_hat, alpha * np.where(w >= 0, 1, -1))


# ------------------------------------------------------------------------------------------- packing


def test_pack_signs_bit_order_matches_a_literal_loop():
    rng = np.random.default_rng(2)
    x = signs(rng, 3, 130)
    packed = pack_signs(x)
    assert packed.dtype == np.uint64 and packed.shape == (3, 3)
    for r in range(3):
        for j in range(3):
            word = 0
            for i in range(64):
                k = 64 * j + i
                if k < 130 and x[r, k] == -1:
                    word |= 1 << i                                    # bit i of word j = element 64 j + i
            assert int(packed[r, j]) == word
    assert int(pack_signs(np.array([-1.0] + [1.0] * 63))[0]) == 1
    assert int(pack_signs(np.array([1.0] * 63 + [-1.0]))[0]) == 2**63


@given(st.integers(1, 300), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_pack_unpack_round_trip(K, seed):
    x = signs(np.random.default_rng(seed), 2, K)
    p = pack_signs(torch.from_numpy(x))
    assert p.shape == (2, n_words(K))
    assert np.array_equal(unpack_signs(p, K), x)
    if K % 64:                                                       # padding bits are 0
        assert int(p[0, -1]) >> (K % 64) == 0


def test_pack_signs_refuses_non_signs():
    with pytest.raises(ValueError, match=r"only \+1 and -1.*binarize"):
        pack_signs(np.array([1.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        pack_signs(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="needs"):
        unpack_signs(np.zeros((1, 2), np.uint64), 64)


# ------------------------------------------------------------------------------------------- the binary GEMM


BACKENDS = ["numpy", pytest.param("numba", marks=needs_numba)]


@pytest.mark.parametrize("backend", BACKENDS)
@given(M=st.integers(1, 40), N=st.integers(1, 40), K=st.integers(1, 400), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_binary_matmul_equals_float_product(backend, M, N, K, seed):
    rng = np.random.default_rng(seed)
    a, w = signs(rng, M, K), signs(rng, N, K)
    got = qb.binary_matmul(a, w, backend=backend)
    assert got.dtype == np.int32
    assert np.array_equal(got, (a.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_ragged_shapes_are_exact(backend):
    rng = np.random.default_rng(3)
    a, w = signs(rng, 150, 1000), signs(rng, 70, 1000)     # several tiles, K = 15 words + 40 bits
    assert np.array_equal(qb.binary_matmul(a, w, backend), (a @ w.T).astype(np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_in_padding_bits_cannot_change_the_result(backend):
    rng = np.random.default_rng(4)
    a, w = signs(rng, 6, 70), signs(rng, 5, 70)
    pa, pw = pack_signs(a), pack_signs(w)
    pa[:, -1] |= np.uint64(0xFFFFFFFFFFFFFFC0)                     # set all 58 padding bits of a only
    assert np.array_equal(qb.xnor_gemm(pa, pw, 70, backend), (a @ w.T).astype(np.int64))


@needs_numba
@pytest.mark.parametrize("K", [1, 63, 64, 65, 128, 129, 200, 256, 320, 449])
@pytest.mark.parametrize("tiles", [(64, 256), (3, 5), (1, 1), (2, 8)])
@pytest.mark.parametrize("parallel", [False, True])
def test_compiled_kernel_tile_edges_and_word_edges(K, tiles, parallel, monkeypatch):
    """M, N odd and not multiples of the tile (two rows per step, 8-column vectors), K at word boundaries
    and W = ceil(K/64) below, at and above a multiple of 4 (four words per counter update),
    garbage in the padding bits of both operands; serial and parallel paths, against the float product."""
    monkeypatch.setattr(bk, "SERIAL_BELOW", 0 if parallel else 2**62)
    rng = np.random.default_rng(K)
    a, w = signs(rng, 13, K), signs(rng, 11, K)
    pa, pw = pack_signs(a), pack_signs(w)
    if K % 64:
        pad = np.uint64(((1 << 64) - 1) ^ ((1 << (K % 64)) - 1))   # the padding bits of the last word
        pa[::2, -1] |= pad
        pw[1::3, -1] |= pad & np.uint64(0xA5A5A5A5A5A5A5A5 & ((1 << 64) - 1))
    got = bk.xnor_gemm_numba(pa, pw, K, *tiles)
    assert got.dtype == np.int32 and got.shape == (13, 11)
    assert np.array_equal(got, (a.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64))


def test_popcount_fallback_agrees_with_bitwise_count():
    x = np.random.default_rng(5).integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    expected = [bin(int(v)).count("1") for v in x]                  # Python's own count
    assert bk._popcount_swar(x).tolist() == expected
    assert bk.popcount64(x).tolist() == expected


def test_bad_gemm_input_is_a_clear_error():
    a = np.ones((2, 3))
    with pytest.raises(ValueError, match="same reduction length K"):
        qb.binary_matmul(a, np.ones((4, 5)))
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        qb.binary_matmul(np.array([[1.0, 0.5]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="2-D"):
        qb.binary_matmul(np.ones(3), np.ones((1, 3)))
    with pytest.raises(ValueError, match="words per row"):
        qb.xnor_gemm(np.zeros((1, 1), np.uint64), np.zeros((1, 2), np.uint64), 64)
    with pytest.raises(TypeError, match="uint64"):
        qb.xnor_gemm(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.uint64), 64)
    with pytest.raises(ValueError, match="backend"):
        qb.xnor_gemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 64, backend="gpu")


def test_huge_k_would_overflow_int32():
    with pytest.raises(ValueError, match="too large.*int32"):
        bk.check_packed(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 2**31)
    assert bk.MAX_K == np.iinfo(np.int32).max                        # |a . w| <= K fits exactly


def test_missing_kernel_falls_back_with_a_slow_path_warning(monkeypatch):
    monkeypatch.setattr(bk, "HAVE_NUMBA", False)
    monkeypatch.setattr(qb, "_warned_slow", False)
    rng = np.random.default_rng(6)
    a, w = signs(rng, 4, 100), signs(rng, 3, 100)
    with pytest.warns(RuntimeWarning, match="slow path"):
        got = qb.binary_matmul(a, w)
    assert np.array_equal(got, (a @ w.T).astype(np.int64))
    with pytest.raises(ImportError, match="numba is not installed"):
        bk.xnor_gemm_numba(pack_signs(a), pack_signs(w), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # warned once, not on every call
        qb.binary_matmul(a, w)


# ------------------------------------------------------------------------------------------- binary convolution


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (0, 1), 1)])
def test_binary_conv2d_equals_f_conv2d(stride, padding, dilation):
    g = torch.Generator().manual_seed(7)
    x = torch.where(torch.rand(3, 5, 9, 8, generator=g) < 0.5, -1.0, 1.0)
    w = torch.where(torch.rand(6, 5, 3, 3, generator=g) < 0.5, -1.0, 1.0)
    got = qb.binary_conv2d(x, w, stride, padding, dilation)
    p = (padding, padding) if isinstance(padding, int) else padding
    ref = F.conv2d(F.pad(x, (p[1], p[1], p[0], p[0]), value=1.0), w, stride=stride, dilation=dilation)
    assert got.dtype == torch.int32 and torch.equal(got, ref.to(torch.int32))
    if padding == 0:
        assert torch.equal(got, F.conv2d(x, w, stride=stride, dilation=dilation).to(torch.int32))


def test_binary_conv2d_errors():
    with pytest.raises(ValueError, match="channels"):
        qb.binary_conv2d(torch.ones(1, 2, 4, 4), torch.ones(3, 4, 3, 3))
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        qb.binary_conv2d(torch.zeros(1, 2, 4, 4), torch.ones(3, 2, 3, 3))


# ------------------------------------------------------------------------------------------- models


def test_binarize_model_keeps_first_and_last_fp32_and_swaps_relus():
    model = SmallCNN()
    bwn, xnor = qb.binarize_model(model), qb.binarize_model(model, activations=True)
    kinds = [type(m).__name__ for _, m in find_layers(xnor)]
    assert kinds == ["Conv2d", "BinaryConv2d", "BinaryLinear", "Linear"]
    assert not bwn.conv2.binary_input and xnor.conv2.binary_input
    assert type(xnor.relu1).__name__ == type(xnor.relu2).__name__ == "Identity"
    assert type(xnor.relu3).__name__ == "ReLU" and type(bwn.relu1).__name__ == "ReLU"
    assert type(model.conv2).__name__ == "Conv2d"                    # original untouched
    assert torch.equal(xnor.conv2.weight, model.conv2.weight)
    with pytest.raises(ValueError, match="at least 3"):
        qb.binarize_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="nn.Module"):
        qb.binarize_model(None)


def test_binary_layer_forward_matches_its_formula():
    torch.manual_seed(0)
    layer = qb.BinaryConv2d(3, 4, 3, padding=1, bias=True, binary_input=True)
    x = torch.randn(2, 3, 6, 6)
    sw, sx = torch.where(layer.weight >= 0, 1.0, -1.0), torch.where(x >= 0, 1.0, -1.0)
    alpha = layer.weight.detach().abs().mean((1, 2, 3))
    ref = F.conv2d(F.pad(sx, (1, 1, 1, 1), value=1.0), sw) * alpha.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(x), ref, atol=1e-6)
    bwn = qb.BinaryLinear(5, 2)
    v = torch.randn(3, 5)
    assert torch.allclose(bwn(v), v @ qb.binarize_weights(bwn.weight.detach()).T + bwn.bias, atol=1e-6)


def test_binary_layer_gradients_flow_through_ste():
    layer = qb.BinaryLinear(4, 2, binary_input=True)
    x = torch.tensor([[0.5, -2.0, 0.1, 1.5]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad[0, 1] == 0 and x.grad[0, 3] == 0                  # |x| > 1: no gradient
    assert (x.grad[0, [0, 2]] != 0).all() and layer.weight.grad.abs().sum() > 0


def test_packed_xnor_model_predicts_exactly_like_its_float_simulation():
    torch.manual_seed(1)
    model = qb.binarize_model(SmallCNN(), activations=True).eval()
    x = torch.rand(64, 1, 28, 28)
    packed = qb.pack_model(model)
    assert type(packed.conv2).__name__ == "PackedBinaryConv2d" and type(packed.conv1).__name__ == "Conv2d"
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))                      # bit for bit, not just argmax
    with pytest.raises(ValueError, match="no binary-input layer"):
        qb.pack_model(qb.binarize_model(SmallCNN()))


def test_packed_size_is_measured_from_the_words():
    model = qb.binarize_model(SmallCNN(), activations=True)
    fp32 = sum(p.numel() * 4 for p in SmallCNN().parameters()) + sum(b.numel() * 4 for b in SmallCNN().buffers()
                                                                        if b.is_floating_point())
    # conv2: 32 channels x ceil(144 / 64) = 3 words; fc1: 64 x ceil(1568 / 64) = 25 words; + α per channel
    binary_bytes = 32 * 3 * 8 + 32 * 4 + 64 * 25 * 8 + 64 * 4
    float_removed = (32 * 144 + 64 * 1568) * 4
    assert qb.packed_size_bytes(model) == fp32 - float_removed + binary_bytes
    assert qb.packed_size_bytes(qb.pack_model(model)) <= qb.packed_size_bytes(model)


# ------------------------------------------------------------------------------------------- the speed benchmark


def test_interleaved_timing_warms_each_callable_and_keeps_its_best_round(monkeypatch):
    """Each round: per callable a pause, an untimed call, a timed call, in order; the result is each one's best."""
    import quantlab.binary_train as bt

    clock, calls = [0.0], []
    durations = {"slow": iter([4, 12, 2, 10, 3, 11]), "fast": iter([1, 2, 1, 3, 1, 1])}
    monkeypatch.setattr(bt.time, "perf_counter", lambda: clock[0])     # a fake clock: each call advances it
    pauses = []
    monkeypatch.setattr(bt.time, "sleep", lambda s: (pauses.append(s), calls.append("pause")))

    def make(name):
        def fn():
            calls.append(name)
            clock[0] += next(durations[name])
        return fn

    best = bt._best_interleaved({"slow": make("slow"), "fast": make("fast")}, repeats=3)
    assert calls == ["pause", "slow", "slow", "pause", "fast", "fast"] * 3
    assert pauses == [0.2] * 6 and best == {"slow": 10, "fast": 1}      # timed calls: slow 12, 10, 11; fast 2, 3, 1
