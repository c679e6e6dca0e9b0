"""The device rule (CONTRIBUTING.md, "Devices"): every model-level public call works on the device of its
model/tensors, returns results there, and equals the CPU result; mismatched, meta and half-moved models
are clear errors. Runs on every available device (the ``device`` fixture: cpu, and cuda when present)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from simdevice import is_on
from torch import nn

from quantlab.engine import run_int
from quantlab.granularity import PerChannel, PerTensor, fake_quantize_weights
from quantlab.models import SmallCNN, collect_activations, evaluate, fold_batchnorm
from quantlab.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantlab.ptq import calibrate_activations, convert, quantize_weights


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)


def _on(model, device):
    return copy.deepcopy(model).to(device)


def _all_on(module: nn.Module, device) -> bool:
    return all(is_on(t.device, device) for t in list(module.parameters()) + list(module.buffers()))


def test_fold_batchnorm(random_cnn, data, device):
    x = data[0]
    folded = fold_batchnorm(_on(random_cnn, device))
    assert _all_on(folded, device)
    with torch.no_grad():
        out = folded(x.to(device))
        assert is_on(out.device, device)
        assert torch.allclose(out.cpu(), fold_batchnorm(random_cnn)(x), atol=1e-4)


@pytest.mark.parametrize("bits, granularity", [(8, PerChannel(0)), (4, PerTensor()), (2, PerChannel(0))])
def test_quantize_weights_then_evaluate(random_cnn, data, device, bits, granularity):
    x, y = data
    wq = quantize_weights(_on(random_cnn, device), bits, granularity)
    ref = quantize_weights(random_cnn, bits, granularity)
    assert _all_on(wq, device) and wq.size_bytes() == ref.size_bytes()
    with torch.no_grad():
        assert torch.allclose(wq(x.to(device)).cpu(), ref(x), atol=1e-4)
    assert evaluate(wq, x.to(device), y) == evaluate(ref, x, y)  # labels may stay on the CPU


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "kl", "symmetric_kl", "js"])
def test_calibrate_activations(random_cnn, data, device, method):
    x = data[0][:32]
    acts = calibrate_activations(_on(random_cnn, device), x.to(device), method, batch_size=16)
    ref = calibrate_activations(random_cnn, x, method, batch_size=16)
    assert acts.ranges.keys() == ref.ranges.keys()
    for name, (lo, hi) in ref.ranges.items():
        tol = 3 * (hi - lo) / 2048 + 1e-5  # float summation order may move a value across one histogram bin
        assert acts.ranges[name] == pytest.approx((lo, hi), abs=tol), name


def test_convert_then_run_int(random_cnn, data, device):
    x = data[0]
    acts = calibrate_activations(random_cnn, x)
    qm_ref = convert(random_cnn, acts)
    logits_ref = run_int(qm_ref, x)
    logits = run_int(qm_ref, x.to(device))  # the engine runs on the CPU and returns on the input's device
    assert is_on(logits.device, device) and torch.equal(logits.cpu(), logits_ref)
    qm = convert(_on(random_cnn, device), acts)  # a model on the device converts (the IntModel lives on the CPU)
    for a, b in zip(qm.layers, qm_ref.layers):
        if hasattr(a, "q_w"):
            assert is_on(a.q_w.device, "cpu")
            diff = (a.q_w.int() - b.q_w.int()).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # folding rounding only
    out = run_int(qm, x.to(device))
    assert float((out.argmax(1).cpu() == logits_ref.argmax(1)).float().mean()) >= 0.98


def test_evaluate_and_fake_quantize_weights(random_cnn, data, device):
    x, y = data
    m = _on(random_cnn, device)
    assert evaluate(m, x.to(device), y.to(device)) == evaluate(random_cnn, x, y)
    fq = fake_quantize_weights(m, 4, PerChannel(0))
    assert _all_on(fq, device)
    ref = fake_quantize_weights(random_cnn, 4, PerChannel(0))
    for (name, a), b in zip(fq.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a.cpu().float(), b.float(), atol=1e-6), name


def test_collect_activations(random_cnn, data, device):
    x = data[0][:16]
    acts = collect_activations(_on(random_cnn, device), x.to(device), batch_size=5)
    ref = collect_activations(random_cnn, x, batch_size=5)
    for name, a in acts.items():
        assert is_on(a.device, device) and torch.allclose(a.cpu(), ref[name], atol=1e-4), name


@pytest.mark.parametrize("make", [MinMaxObserver, lambda: MovingAverageMinMaxObserver(0.1),
                                  lambda: PerChannelMinMaxObserver(axis=1), lambda: HistogramObserver(256)])
def test_observers(device, make):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 4, 3, generator=g) * k for k in (1.0, 2.0, 0.5)]
    obs, ref = make(), make()
    for b in batches:
        assert is_on(obs(b.to(device)).device, device)  # returns its input unchanged
        ref(b)
    p, p_ref = obs.qparams(8), ref.qparams(8)
    assert torch.allclose(p.s.cpu(), p_ref.s) and torch.equal(p.z.cpu(), p_ref.z)
    if isinstance(obs, HistogramObserver):
        assert (obs.histogram()[0] == ref.histogram()[0]).all()


def test_model_and_data_on_different_devices_name_both(random_cnn, data, device):
    if is_on(device, "cpu"):
        pytest.skip("needs a second device")
    m = _on(random_cnn, device)
    dev = re.escape(str(next(m.parameters()).device))
    x, y = data
    with pytest.raises(ValueError, match=rf"x is on cpu but model is on {dev}"):
        evaluate(m, x, y)
    with pytest.raises(ValueError, match=rf"calib_x is on cpu but model is on {dev}.*\.to\("):
        calibrate_activations(m, x)
    with pytest.raises(ValueError, match=rf"x is on cpu but model is on {dev}"):
        collect_activations(m, x)
    with pytest.raises(TypeError, match=r"x\.float\(\) / 255"):
        evaluate(m, (x * 255).to(torch.uint8).to(device), y)
    half = _on(random_cnn, "cpu")
    half.fc2.to(device)
    with pytest.raises(ValueError, match=r"split across devices.*'fc2'"):
        fold_batchnorm(half)


# --- meta (no data) and half-moved models: tested on the CPU with the meta device ---------------------------

CALLS = {
    "fold_batchnorm": lambda m, x: fold_batchnorm(m),
    "quantize_weights": lambda m, x: quantize_weights(m, 8),
    "fake_quantize_weights": lambda m, x: fake_quantize_weights(m, 4),
    "evaluate": lambda m, x: evaluate(m, x, torch.zeros(len(x), dtype=torch.int64)),
    "calibrate_activations": lambda m, x: calibrate_activations(m, x),
    "collect_activations": lambda m, x: collect_activations(m, x),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_meta_model_is_a_clear_error(call):
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"model has no data.*'meta' device.*load_state_dict"):
        call(SmallCNN().to("meta"), x)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_half_moved_model_names_the_layers(call):
    m = SmallCNN()
    m.fc2.to("meta")  # one layer moved, the rest on the CPU
    with pytest.raises(ValueError, match=r"model has no data: the weights of 'fc2'"):
        call(m, torch.rand(4, 1, 28, 28))


def test_meta_inputs_are_refused():
    with pytest.raises(ValueError, match="x is on the 'meta' device"):
        evaluate(SmallCNN(), torch.rand(4, 1, 28, 28, device="meta"), torch.zeros(4))
    from quantlab import quantize

    with pytest.raises(ValueError, match="r is on the 'meta' device"):
        quantize(torch.zeros(3, device="meta"), 0.1, 0, -8, 7)
