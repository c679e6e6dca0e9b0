"""Tests for quantlab.ptq: weight quantization (storage, size), full quantization (calibrate -> convert)."""

import copy

import pytest
import torch
from torch import nn

from quantlab.engine import IntConv2d, IntLinear, run_int
from quantlab.granularity import PerChannel, PerGroup, PerTensor, fake_quantize_tensor
from quantlab.models import evaluate, load_trained
from quantlab.packing import pack_bits
from quantlab.ptq import (
    calibrate_activations,
    convert,
    quantize_weights,
    state_size_bytes,
)


@pytest.fixture(scope="module")
def xs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 28, 28, generator=g)


@pytest.fixture(scope="module")
def trained():
    try:
        model = load_trained()
    except FileNotFoundError as e:
        pytest.skip(f"trained checkpoint missing: {e}")
    from quantlab.data import calibration_batch, load_mnist

    x, y = load_mnist("test", n=500)
    return model, x, y, calibration_batch(200)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- weight quantization --------------------------------------------------------------------------


def test_weight_only_equals_fake_quantized_weights(random_cnn, xs):
    wq = quantize_weights(random_cnn, bits=4, granularity=PerChannel(0))
    ref = copy.deepcopy(random_cnn)
    with torch.no_grad():  # independent reference: fake-quantize each weight in place
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(fake_quantize_tensor(m.weight, 4, PerChannel(0), symmetric=True, narrow=True))
        assert torch.allclose(wq(xs), ref(xs), atol=1e-5)
        assert not torch.allclose(wq(xs), random_cnn(xs), atol=1e-3)  # it did quantize


def test_weight_only_size_is_measured_and_shrinks(random_cnn):
    fp32 = state_size_bytes(random_cnn)
    sizes = {b: quantize_weights(random_cnn, b).size_bytes() for b in (8, 4, 2)}
    assert 3.7 < fp32 / sizes[8] < 4.0
    assert 6.5 < fp32 / sizes[4] < 8.0
    assert fp32 / sizes[2] > 11
    # per-channel stores one s per output channel: slightly bigger than per-tensor
    assert quantize_weights(random_cnn, 8, PerTensor()).size_bytes() < sizes[8]


def test_weight_only_does_not_touch_model(random_cnn, xs):
    before = copy.deepcopy(random_cnn)
    quantize_weights(random_cnn, 3, PerTensor(), symmetric=False)(xs)
    assert _same_state(before, random_cnn)


def test_weight_only_rejects_bad_arguments(random_cnn):
    with pytest.raises(ValueError, match="bits"):
        quantize_weights(random_cnn, 1)
    with pytest.raises(ValueError, match="PerChannel"):
        quantize_weights(random_cnn, 8, PerGroup(8))


# --- calibration ----------------------------------------------------------------------------------


def test_minmax_ranges_match_forward_hooks(random_cnn, xs):
    acts = calibrate_activations(random_cnn, xs, "minmax", batch_size=16)
    from quantlab.models import fold_batchnorm

    folded, seen = fold_batchnorm(random_cnn), {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o))
             for n, m in folded.named_children()]
    with torch.no_grad():
        folded(xs)
    for h in hooks:
        h.remove()
    for name in ("conv1", "relu1", "pool2", "fc1", "fc2"):
        expected = (float(seen[name].min()), float(seen[name].max()))
        assert acts.ranges[name] == pytest.approx(expected, abs=1e-5)
    assert acts.ranges["input"] == pytest.approx((float(xs.min()), float(xs.max())))
    assert acts.n_images == 64


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(0, 1, 28, 28), "empty"),
    (torch.zeros(4, 28, 28), r"\(N, 1, 28, 28\)"),
    (torch.zeros(4, 3, 28, 28), r"\(N, 1, 28, 28\)"),
    (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
])
def test_calibration_rejects_bad_data(random_cnn, bad, match):
    before = copy.deepcopy(random_cnn)
    with pytest.raises(ValueError, match=match):
        calibrate_activations(random_cnn, bad)
    assert _same_state(before, random_cnn)


def test_calibration_reports_nonfinite_activations(random_cnn, xs):
    broken = copy.deepcopy(random_cnn)
    with torch.no_grad():
        broken.fc1.weight.fill_(3e38)  # sums overflow float32 -> inf
    with pytest.raises(ValueError, match="fc1"):
        calibrate_activations(broken, xs + 1.0)


def test_unsupported_layers_are_listed_and_nothing_changes(xs):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10),
                          nn.Softmax(1))
    before = copy.deepcopy(model)
    with pytest.raises(ValueError) as e:
        calibrate_activations(model, xs)
    msg = str(e.value)
    assert "1 (Sigmoid)" in msg and "4 (Softmax)" in msg and "Supported: Conv2d, Linear, ReLU" in msg
    assert _same_state(before, model)


def test_non_chain_model_is_refused(xs):
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x)) + x

    with pytest.raises(ValueError, match="plain chain"):
        calibrate_activations(Skip(), xs)


def test_method_and_bits_checks(random_cnn, xs):
    with pytest.raises(ValueError, match="method"):
        calibrate_activations(random_cnn, xs, method="nope")
    acts = calibrate_activations(random_cnn, xs[:8], method="percentile", bits=8)
    with pytest.raises(ValueError, match="recalibrate"):
        convert(random_cnn, acts, act_bits=4)


# --- convert + engine on the CNN ------------------------------------------------------------------


def test_convert_structure_and_no_mutation(random_cnn, xs):
    before = copy.deepcopy(random_cnn)
    acts = calibrate_activations(random_cnn, xs)
    qm = convert(random_cnn, acts, 8, 8, PerChannel(0))
    assert _same_state(before, random_cnn)
    kinds = [type(layer).__name__ for layer in qm.layers]
    assert kinds == ["IntConv2d", "IntMaxPool2d", "IntConv2d", "IntMaxPool2d", "IntFlatten", "IntLinear",
                     "IntLinear"]
    fused = [layer.relu for layer in qm.layers if isinstance(layer, (IntConv2d, IntLinear))]
    assert fused == [True, True, True, False]
    for layer in qm.layers:
        if isinstance(layer, (IntConv2d, IntLinear)):
            assert layer.q_w.dtype == torch.int8 and layer.q_b.dtype == torch.int32
            assert bool((layer.M0 >= 2**30).all() and (layer.M0 < 2**31).all())
    logits, rec = run_int(qm, xs, intermediates=True)
    ref = random_cnn(xs)
    assert (logits - ref).abs().max() < 0.1 * ref.abs().max()
    for r in rec:
        assert int(r["q_out"].min()) >= 0 and int(r["q_out"].max()) <= 255
        if r["acc"] is not None:
            assert int(r["acc"].abs().max()) < 2**31


def test_bits_change_the_grid(random_cnn, xs):
    acts = calibrate_activations(random_cnn, xs)
    q4 = convert(random_cnn, acts, weight_bits=4, act_bits=4, granularity=PerTensor())
    conv = q4.layers[0]
    assert conv.q_max == 15 and int(conv.q_w.abs().max()) <= 7
    assert len(torch.unique(conv.s_w)) == 1  # per-tensor: one scale


def test_trained_cnn_w8a8_within_one_percent(trained):
    model, x, y, x_cal = trained
    acc_fp32 = evaluate(model, x, y)
    acts = calibrate_activations(model, x_cal)
    for g in (PerTensor(), PerChannel(0)):
        acc_int = float((run_int(convert(model, acts, 8, 8, g), x).argmax(1) == y).float().mean())
        assert acc_int >= acc_fp32 - 0.01, (g, acc_int, acc_fp32)
    acc_w8 = evaluate(quantize_weights(model, 8), x, y)
    assert abs(acc_w8 - acc_fp32) <= 0.005


# --- the lab's explorer (quantlab/viz/ptq.py) -----------------------------------------------------


def test_prefix_ranges_equal_calibrate_activations(random_cnn, xs):
    from quantlab.viz.ptq import prefix_minmax_ranges

    pre = prefix_minmax_ranges(random_cnn, xs, (1, 7, 64))
    for n in (1, 7, 64):
        ref = calibrate_activations(random_cnn, xs[:n]).ranges
        assert pre[n].ranges.keys() == ref.keys()
        for k in ref:
            assert pre[n].ranges[k] == pytest.approx(ref[k], abs=1e-6)


def test_explorer_updates_in_place_from_cache(random_cnn, xs):
    import matplotlib

    matplotlib.use("Agg")
    from quantlab.viz.ptq import PTQExplorer

    y = torch.randint(0, 10, (len(xs),), generator=torch.Generator().manual_seed(0))
    ex = PTQExplorer(random_cnn, xs, y, xs, weight_bits=(2, 8), act_bits=(4, 8), calib_sizes=(64,),
                     n_eval=32, progress=False)
    assert len(ex.results) == 2 * 2 + 2 * 2 * 2  # weight-only (bits x gran) + full grid
    n_figs, n_results = len(matplotlib.pyplot.get_fignums()), len(ex.results)
    before = ex.steps["out"].get_data().values.copy()
    ex.controls["act_bits"].value = 4
    after = ex.steps["out"].get_data().values
    assert len(after) == 16 and len(before) == 256  # the output histogram moved to the 4-bit grid
    ex.controls["mode"].value = "weight-only"
    ex.controls["weight_bits"].value = 2
    assert ex.n_updates == 4
    assert len(matplotlib.pyplot.get_fignums()) == n_figs and len(ex.results) == n_results  # nothing new
    res = ex.results[("weight-only", 2, None, "per-channel", None)]
    assert ex.l_cur.get_ydata()[0] == res["accuracy"]


def test_packed_size_bytes_is_measured(random_cnn, xs):
    """size_bytes(packed=True) equals the bytes pack_bits really produces for each weight, plus the rest."""
    acts = calibrate_activations(random_cnn, xs)
    for bits in (2, 3, 4, 8):
        qm = convert(random_cnn, acts, weight_bits=bits, act_bits=8)
        measured = 0
        for layer in qm.layers:
            if isinstance(layer, (IntConv2d, IntLinear)):
                q_min = -(2 ** (bits - 1)) + 1  # symmetric narrow grid of the weights
                measured += pack_bits(layer.q_w, bits, q_min).numel()
                measured += sum(t.numel() * t.element_size() for t in (layer.s_w, layer.z_w, layer.q_b,
                                                                        layer.M0, layer.n))
        assert qm.size_bytes(packed=True) == measured, bits
        assert qm.size_bytes(packed=False) >= measured
