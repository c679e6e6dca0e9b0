"""Bad input across the library's non-core modules: one table per module, each row (call, exception type,
a message fragment that names the argument or the layer). Never a raw torch error, never a silent NaN."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import dequantize, fake_quantize, qrange, quantize
from quantlab.engine import int_conv2d, int_linear, quantize_bias, requant_multiplier, requantize, run_int
from quantlab.granularity import PerChannel, choose_qparams, fake_quantize_weights
from quantlab.metrics import model_size_bytes, mse
from quantlab.models import SmallCNN, collect_activations, evaluate, fold_batchnorm, train
from quantlab.observers import MinMaxObserver
from quantlab.ptq import ActRanges, calibrate_activations, convert, quantize_weights

NAN, INF = float("nan"), float("inf")
M0, N = requant_multiplier(0.25)


def _raises(call, exc, fragment):
    with pytest.raises(exc) as e:
        call()
    assert fragment in str(e.value), str(e.value)


# --- linear.dequantize --------------------------------------------------------------------------------

DEQUANTIZE = [
    (lambda: dequantize(torch.tensor([1.0, NAN]), 0.1, 0), ValueError, "q contains"),
    (lambda: dequantize(torch.tensor([INF]), 0.1, 0), ValueError, "q contains"),
    (lambda: dequantize(torch.tensor([1.5]), 0.1, 0), ValueError, "q must hold integers"),
    (lambda: dequantize(torch.tensor([1]), 0.1, 0.5), ValueError, "z must be an integer"),
    (lambda: dequantize(torch.tensor([1]), 0.1, NAN), ValueError, "z must be an integer"),
    (lambda: dequantize(torch.tensor([1]), 0.0, 0), ValueError, "s must be finite and > 0"),
    (lambda: dequantize(torch.tensor([1]), None, 0), TypeError, "s must be"),
    (lambda: dequantize(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2), 0), ValueError, "s has shape (2,)"),
    (lambda: dequantize("3", 0.1, 0), TypeError, "q must be"),
    (lambda: quantize(torch.zeros(4, 3), torch.ones(4), 0, -8, 7), ValueError, "per-channel s for axis k"),
]


@pytest.mark.parametrize("call, exc, fragment", DEQUANTIZE)
def test_linear_bad_input(call, exc, fragment):
    _raises(call, exc, fragment)


# --- engine ---------------------------------------------------------------------------------------------

ACC = torch.tensor([[100, -100]])
Q_X, Q_W = torch.ones(1, 2, 4, 4, dtype=torch.int64), torch.ones(3, 2, 3, 3, dtype=torch.int64)
ENGINE = [
    (lambda: requantize(ACC, M0, N, 0, 5, 5), ValueError, "q_min=5 must be smaller"),
    (lambda: requantize(ACC, M0, N, 0, 9, 2), ValueError, "q_min=9"),
    (lambda: requantize(ACC, M0, -3, 0, -128, 127), ValueError, "n (the right shift) must be >= 0"),
    (lambda: requantize(ACC, -1, N, 0, -128, 127), ValueError, "M0 must lie in [0, 2^31)"),
    (lambda: requantize(ACC, M0, N, 0.5, -128, 127), ValueError, "z_y must be an integer"),
    (lambda: requantize(ACC, M0, N, 300, 0, 255), ValueError, "z_y=300 is off the output grid"),
    (lambda: requantize(torch.tensor([[NAN]]), M0, N, 0, 0, 255), ValueError, "acc contains"),
    (lambda: requantize(torch.tensor([[1.5]]), M0, N, 0, 0, 255), ValueError, "acc must hold integers"),
    (lambda: requantize(ACC, torch.tensor([M0] * 3), torch.tensor([N] * 3), 0, -128, 127), ValueError,
     "per-channel M0/n have 3 entries"),
    (lambda: quantize_bias(torch.tensor([NAN]), 0.1, 0.1), ValueError, "b contains"),
    (lambda: quantize_bias(torch.tensor([1.0]), 0.0, 0.1), ValueError, "s_w must be finite and > 0"),
    (lambda: quantize_bias(torch.tensor([1.0]), 0.1, -0.1), ValueError, "s_x must be finite and > 0"),
    (lambda: quantize_bias(torch.tensor([1.0, 2.0]), torch.ones(3), 0.1), ValueError, "s_w must be one number"),
    (lambda: quantize_bias(torch.tensor([1e9]), 1e-9, 1e-9), OverflowError, "int32"),
    (lambda: int_linear(torch.tensor([[0.5, 1.0]]), 0, torch.ones(1, 2), 0), ValueError, "q_x must hold integers"),
    (lambda: int_linear(torch.tensor([[1, 2]]), 0.5, torch.ones(1, 2), 0), ValueError, "z_x must be an integer"),
    (lambda: int_linear(torch.tensor([[1, 2]]), 0, torch.ones(1, 2), 0.5), ValueError, "z_w must be an integer"),
    (lambda: int_linear(torch.tensor([[1, 2]]), 0, torch.ones(1, 3), 0), ValueError, "q_w expects 3"),
    (lambda: int_linear(torch.tensor([1, 2]), 0, torch.ones(1, 2), 0), ValueError, "q_x must have 2 dimensions"),
    (lambda: int_linear(torch.tensor([[1, 2]]), 0, torch.ones(1, 2), 0, torch.ones(4)), ValueError, "q_b must"),
    (lambda: int_conv2d(Q_X.float() + 0.5, 0, Q_W, 0), ValueError, "q_x must hold integers"),
    (lambda: int_conv2d(Q_X, 0.25, Q_W, 0), ValueError, "z_x must be an integer"),
    (lambda: int_conv2d(Q_X, 0, Q_W, torch.tensor([0.0, 0.5, 0.0])), ValueError, "z_w must be an integer"),
    (lambda: int_conv2d(Q_X, 0, torch.ones(3, 1, 3, 3), 0), ValueError, "q_x has 2 input channels"),
    (lambda: int_conv2d(Q_X, 0, torch.ones(3, 2, 5, 5), 0), ValueError, "smaller than the kernel"),
    (lambda: int_conv2d(Q_X, 0, Q_W, torch.zeros(2)), ValueError, "z_w must be one int"),
    (lambda: int_conv2d(Q_X[0], 0, Q_W, 0), ValueError, "q_x must have 4 dimensions"),
]


@pytest.mark.parametrize("call, exc, fragment", ENGINE)
def test_engine_bad_input(call, exc, fragment):
    _raises(call, exc, fragment)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def xs():
    return torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def qmodel(model, xs):
    return convert(model, calibrate_activations(model, xs))


RUN_INT = [
    (lambda q, x: run_int(q, x.masked_fill(x > 0.5, INF)), ValueError, "x_float contains"),
    (lambda q, x: run_int(q, x.masked_fill(x > 0.5, NAN)), ValueError, "x_float contains"),  # not "overflow"
    (lambda q, x: run_int(q, (x * 255).to(torch.uint8)), TypeError, "x_float.float() / 255"),
    (lambda q, x: run_int(q, x[:0]), ValueError, "x_float is empty"),
    (lambda q, x: run_int(q, x.repeat(1, 3, 1, 1)), ValueError, "x_float must have shape (N, 1, H, W)"),
    (lambda q, x: run_int(q, x[..., :20, :20]), ValueError, "layer 'fc1' (IntLinear)"),
    (lambda q, x: run_int(None, x), TypeError, "qmodel must be an IntModel"),
    (lambda q, x: run_int(q, x.numpy()), TypeError, "x_float must be a float torch.Tensor"),
]


@pytest.mark.parametrize("call, exc, fragment", RUN_INT)
def test_run_int_bad_input(qmodel, xs, call, exc, fragment):
    _raises(lambda: call(qmodel, xs), exc, fragment)


# --- models, ptq, metrics, observers: None/wrong objects, shapes, dtypes --------------------------------

MODEL_FUNCS = [
    lambda m: fold_batchnorm(m),
    lambda m: evaluate(m, torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64)),
    lambda m: quantize_weights(m, 8),
    lambda m: calibrate_activations(m, torch.zeros(2, 1, 28, 28)),
    lambda m: fake_quantize_weights(m, 4),
    lambda m: collect_activations(m, torch.zeros(2, 1, 28, 28)),
    lambda m: model_size_bytes(m),
    lambda m: convert(m, ActRanges({}, "minmax", 8, 1)),
]


@pytest.mark.parametrize("func", MODEL_FUNCS)
@pytest.mark.parametrize("bad", [None, {"conv1.weight": torch.zeros(1)}, "cnn.pt"])
def test_model_argument_must_be_a_module(func, bad):
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        func(bad)


def test_state_dict_gets_a_hint():
    _raises(lambda: fold_batchnorm(SmallCNN().state_dict()), TypeError, "load_state_dict")


MODELS = [
    (lambda m, x: evaluate(m, x, torch.zeros(3, dtype=torch.int64)), ValueError, "equal length"),
    (lambda m, x: evaluate(m, (x * 255).to(torch.uint8), torch.zeros(16)), TypeError, "x.float() / 255"),
    (lambda m, x: evaluate(m, x[:0], torch.zeros(0)), ValueError, "x is empty"),
    (lambda m, x: evaluate(m, x, torch.zeros(16), batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda m, x: train(batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda m, x: train(epochs=0), ValueError, "epochs must be >= 1"),
    (lambda m, x: train(epochs=1.5), TypeError, "epochs must be a positive integer"),
    (lambda m, x: train(lr=0.0), ValueError, "lr must be finite and > 0"),
    (lambda m, x: train(lr=NAN), ValueError, "lr must be finite and > 0"),
    (lambda m, x: train(max_shift=-1), ValueError, "max_shift"),
    (lambda m, x: calibrate_activations(m, x, batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda m, x: calibrate_activations(m, x.repeat(1, 3, 1, 1)), ValueError, "(N, 1, 28, 28)"),
    (lambda m, x: calibrate_activations(m, x.to(torch.uint8)), TypeError, "calib_x.float() / 255"),
    (lambda m, x: convert(m, {"input": (0.0, 1.0)}), TypeError, "act_ranges must be the ActRanges"),
    (lambda m, x: convert(m, ActRanges({"input": (0.0, 1.0)}, "minmax", 8, 1)), ValueError, "no range for"),
    (lambda m, x: mse(torch.zeros(3), torch.zeros(4)), ValueError, "same shape"),
    (lambda m, x: mse(torch.zeros(3), None), TypeError, "r_hat must be"),
    (lambda m, x: model_size_bytes(m, bits=0), ValueError, "bits=0"),
]


@pytest.mark.parametrize("call, exc, fragment", MODELS)
def test_models_ptq_metrics_bad_input(model, xs, call, exc, fragment):
    _raises(lambda: call(model, xs), exc, fragment)


def test_fold_batchnorm_negative_variance_names_the_layer(model):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.bn2.running_var[3] = -1.0
    _raises(lambda: fold_batchnorm(bad), ValueError, "BatchNorm2d 'bn2' has a negative running variance")
    with torch.no_grad():
        bad.bn2.running_var[3] = NAN
    _raises(lambda: fold_batchnorm(bad), ValueError, "'bn2' has NaN/inf")


def test_weight_errors_name_the_layer(model, xs):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.fc2.weight[0, 0] = INF
    _raises(lambda: quantize_weights(bad, 8), ValueError, "layer 'fc2' (Linear)")
    _raises(lambda: fake_quantize_weights(bad, 8), ValueError, "layer 'fc2' (Linear)")
    acts = calibrate_activations(model, xs)
    _raises(lambda: convert(bad, acts), ValueError, "layer 'fc2' (Linear)")
    _raises(lambda: calibrate_activations(bad, xs), ValueError, "layer 'fc2' produced NaN/inf")


def test_observer_batches_must_stay_on_one_device():
    obs = MinMaxObserver()
    obs(torch.zeros(3))
    _raises(lambda: obs(torch.zeros(3, device="meta")), ValueError, "x is on the 'meta' device")


# --- promised edge cases: finite and correct -------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 8, 16])
@pytest.mark.parametrize("r", [torch.zeros(5), torch.full((5,), -2.5), torch.tensor([0.7]), torch.zeros(1)])
def test_edge_cases_are_finite_and_correct(bits, r):
    p = choose_qparams(r, bits)
    q = quantize(r, p.s, p.z, p.q_min, p.q_max)
    r_hat = dequantize(q, p.s, p.z)
    assert bool(torch.isfinite(r_hat).all()) and float(p.s) > 0
    assert torch.allclose(r_hat, r, rtol=1e-6, atol=1e-6)  # constants and zeros land on a level exactly


def test_requantize_zero_shift_and_engine_edge_cases():
    assert requantize(torch.tensor([[3, -3]]), 1, 0, 0, -8, 7).tolist() == [[3, -3]]  # M = 1, no rounding
    acc = int_linear(torch.zeros(1, 4, dtype=torch.int64), 0, torch.zeros(2, 4, dtype=torch.int64), 0)
    assert acc.tolist() == [[0, 0]]
    assert quantize_bias(torch.zeros(3), 1e-3, 1e-3).tolist() == [0, 0, 0]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), k=st.integers(1, 6), c=st.integers(1, 5), k_bad=st.integers(1, 6))
def test_int_linear_shape_mismatch_is_a_value_error(n, k, c, k_bad):
    q_x = torch.randint(0, 255, (n, k))
    q_w = torch.randint(-127, 128, (c, k_bad))
    if k == k_bad:
        ref = (q_x.double() @ q_w.double().T).to(torch.int64)
        assert torch.equal(int_linear(q_x, 0, q_w, 0), ref)
    else:
        _raises(lambda: int_linear(q_x, 0, q_w, 0), ValueError, f"q_w expects {k_bad}")


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), axis=st.integers(0, 3))
def test_per_channel_s_against_the_wrong_axis_is_a_value_error(shape, axis):
    r = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    axis %= len(shape)
    p = choose_qparams(r, 8, PerChannel(axis))
    assert quantize(r, p.s, p.z, p.q_min, p.q_max).shape == r.shape
    wrong = p.s.reshape(-1)  # shape (C,) lines up with the last axis, not with ``axis``
    if wrong.numel() not in (1, shape[-1]):
        _raises(lambda: fake_quantize(r, wrong, 0, *qrange(8)), ValueError, "does not broadcast against r")
    assert math.isfinite(float(p.s.max()))
