"""Tests for quantlab.qat: the fake-quant node vs PyTorch, LSQ/PACT gradients, the four steps, bad input.

References: torch.fake_quantize_per_tensor_affine / _per_channel_affine (forward and autograd gradient),
torch._fake_quantize_learnable_per_tensor_affine (LSQ), closed forms written out as literal loops here,
PACT's own formula y = (|x| - |x - alpha| + alpha) / 2 differentiated by autograd, and the integer engine.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantlab.data import calibration_batch, data_dir, load_mnist
from quantlab.engine import IntModel, run_int
from quantlab.granularity import PerChannel, PerTensor, qparams_from_range, range_of
from quantlab.linear import qrange
from quantlab.models import collect_activations, evaluate, fold_batchnorm, load_trained
from quantlab.qat import (
    LSQ,
    PACT,
    QATLayer,
    QATReLU,
    QuantNode,
    export,
    export_layer_weights,
    fake_quant,
    initial_ranges,
    load_qat,
    lsq_grad_scale,
    prepare_qat,
    qat_train,
    quantization_points,
    save_qat,
)

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = settings(max_examples=60, deadline=None)


def _levels_and_mask(r, s, z, q_min, q_max, ref_fn):
    """Our fake-quant and PyTorch's on r: (our levels, their levels, our grad, their grad, r/s + z)."""
    r1 = r.clone().requires_grad_(True)
    r2 = r.clone().requires_grad_(True)
    g = torch.randn_like(r)
    out = fake_quant(r1, qparams_like(s, z, q_min, q_max))
    ref = ref_fn(r2)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    return out.detach(), ref.detach(), r1.grad, r2.grad, g


def qparams_like(s, z, q_min, q_max):
    from quantlab.granularity import QParams

    return QParams(torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(z, dtype=torch.int64), q_min, q_max)


def _not_tie(x: torch.Tensor) -> torch.Tensor:
    """Positions where r/s + z is not within 1e-3 of a rounding tie (PyTorch rounds r * (1/s) + z)."""
    return (x - torch.floor(x) - 0.5).abs() > 1e-3


# ------------------------------------------------------------------------------- the fake-quant node


@FAST
@given(bits=st.integers(2, 8), signed=st.booleans(), shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       log_s=st.floats(-8.0, 3.0), z_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_fake_quant_per_tensor_matches_torch_values_and_gradient(bits, signed, shape, log_s, z_frac, seed):
    q_min, q_max = qrange(bits, signed=signed)
    s = float(torch.tensor(2.0**log_s, dtype=torch.float32))
    z = int(round(q_min + z_frac * (q_max - q_min)))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (q_max - q_min + 6) + (q_min - 3) - z
    r = (x * s).float()
    out, ref, g_ours, g_ref, _ = _levels_and_mask(
        r, s, z, q_min, q_max, lambda t: torch.fake_quantize_per_tensor_affine(t, s, z, q_min, q_max))
    ok = _not_tie(r.double() / s + z)
    assert torch.equal(out[ok], ref[ok])
    assert torch.equal(g_ours[ok], g_ref[ok])
    assert out.shape == r.shape and out.dtype == r.dtype


@FAST
@given(bits=st.integers(2, 8), signed=st.booleans(), shape=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_fake_quant_per_channel_matches_torch_values_and_gradient(bits, signed, shape, seed):
    q_min, q_max = qrange(bits, signed=signed)
    gen = torch.Generator().manual_seed(seed)
    C = shape[0]
    s = torch.exp(torch.empty(C).uniform_(-8.0, 3.0, generator=gen))
    z = torch.randint(q_min, q_max + 1, (C,), generator=gen)
    view = [C] + [1] * (len(shape) - 1)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (q_max - q_min + 6) + (q_min - 3) - z.view(view)
    r = (x * s.view(view)).float()
    out, ref, g_ours, g_ref, _ = _levels_and_mask(
        r, s.view(view), z.view(view), q_min, q_max,
        lambda t: torch.fake_quantize_per_channel_affine(t, s, z.to(torch.int32), 0, q_min, q_max))
    ok = _not_tie(r.double() / s.view(view).double() + z.view(view))
    assert torch.equal(out[ok], ref[ok])
    assert torch.equal(g_ours[ok], g_ref[ok])


def test_fake_quant_gradient_is_one_inside_zero_outside():
    p = qparams_like(0.25, 0, -4, 3)  # s = 1/4 on [-4, 3]: levels -1 ... 0.75
    r = torch.tensor([-2.0, -1.0, 0.1, 0.75, 0.87, 0.9, 5.0], requires_grad=True)
    fake_quant(r, p).sum().backward()
    assert r.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # 0.87/0.25 = 3.48 rounds to 3: inside


# ------------------------------------------------------------------------------- LSQ and PACT


def _lsq_closed_form(r, s, q_min, q_max, g):
    """dL/ds for L = sum(r_hat): a literal loop over the values (LSQ paper, eq. 3) times g."""
    total = 0.0
    for v in (r.double() / s).tolist():
        q = round(v)  # half to even, as torch.round
        total += q_min if q < q_min else q_max if q > q_max else q - v
    return total * g


@FAST
@given(bits=st.integers(2, 8), n=st.integers(1, 50), log_s=st.floats(-4.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_lsq_gradients_match_closed_form_and_torch_learnable(bits, n, log_s, seed):
    q_min, q_max = qrange(bits, signed=True)
    gen = torch.Generator().manual_seed(seed)
    s_val = float(torch.tensor(2.0**log_s, dtype=torch.float32))
    r = ((torch.rand(n, generator=gen, dtype=torch.float64) * (q_max - q_min + 6) + q_min - 3) * s_val).float()
    g = lsq_grad_scale(n, q_max)
    rr, s = r.clone().requires_grad_(True), torch.tensor(s_val, requires_grad=True)
    out = LSQ.apply(rr, s, q_min, q_max, g)
    out.sum().backward()
    assert s.grad.item() == pytest.approx(_lsq_closed_form(r, s_val, q_min, q_max, g), rel=1e-4, abs=1e-5)
    r2, s2 = r.clone().requires_grad_(True), torch.tensor([s_val], requires_grad=True)
    ref = torch._fake_quantize_learnable_per_tensor_affine(r2, s2, torch.tensor([0.0]), q_min, q_max, g)
    ref.sum().backward()
    ok = _not_tie(r.double() / s_val)
    assert torch.equal(out.detach()[ok], ref.detach()[ok])
    assert torch.equal(rr.grad[ok], r2.grad[ok])
    if bool(ok.all()):
        assert s.grad.item() == pytest.approx(s2.grad.item(), rel=1e-4, abs=1e-5)


def test_lsq_per_channel_step_gradient_sums_per_channel():
    w = torch.randn(3, 4, 2, 2)
    s = torch.tensor([0.1, 0.2, 0.5]).view(3, 1, 1, 1).requires_grad_(True)
    LSQ.apply(w, s, -7, 7, 0.5).sum().backward()
    expect = [_lsq_closed_form(w[c].flatten(), float(s.detach()[c]), -7, 7, 0.5) for c in range(3)]
    assert s.grad.flatten().tolist() == pytest.approx(expect, rel=1e-4, abs=1e-5)


def test_lsq_grad_scale_closed_form():
    assert lsq_grad_scale(144, 7) == pytest.approx(1 / (144 * 7) ** 0.5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pact_matches_its_formula_with_autograd(bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(200, generator=gen) * 2
    alpha = torch.tensor(1.3)
    x1, a1 = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    out = PACT.apply(x1, a1, bits)
    gout = torch.randn(200, generator=gen)
    (out * gout).sum().backward()
    x2, a2 = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    y = 0.5 * (x2.abs() - (x2 - a2).abs() + a2)  # PACT paper, eq. 1
    s = a2.detach() / (2**bits - 1)
    y_hat = y + (torch.round(y / s) * s - y).detach()  # straight through the rounding
    (y_hat * gout).sum().backward()
    assert torch.allclose(out, y_hat, atol=1e-6)
    assert torch.equal(x1.grad, x2.grad)
    assert a1.grad.item() == pytest.approx(a2.grad.item(), rel=1e-5)


# ------------------------------------------------------------------------------- nodes


def test_activation_node_moving_average_and_minmax_updates():
    node = QuantNode("activation", 8, observer="ema", averaging_constant=0.1).init_range(0.0, 1.0)
    node.train()(torch.tensor([-1.0, 3.0]))
    assert (float(node.r_min), float(node.r_max)) == pytest.approx((0.0 + 0.1 * (-1.0 - 0.0), 1.0 + 0.1 * 2.0))
    mm = QuantNode("activation", 8, observer="minmax").init_range(0.0, 1.0)
    mm.train()(torch.tensor([0.5, 2.0]))
    mm(torch.tensor([0.2, 1.5]))
    assert (float(mm.r_min), float(mm.r_max)) == (0.0, 2.0)
    mm.eval()(torch.tensor([9.0]))
    mm.train()
    mm.frozen = True
    mm(torch.tensor([9.0]))
    assert float(mm.r_max) == 2.0  # eval mode and frozen nodes do not move


def test_weight_node_range_follows_the_weights_per_channel():
    node = QuantNode("weight", 4, PerChannel(0)).init_range(*range_of(torch.ones(3, 2), PerChannel(0)))
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25], [3.0, 0.0]])
    out = node(w)
    s = torch.tensor([2.0, 0.5, 3.0]) / 7
    assert torch.allclose(out, torch.clamp(torch.round(w / s[:, None]), -7, 7) * s[:, None])


def test_node_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits=9"):
        QuantNode("weight", 9)
    with pytest.raises(ValueError, match="pact"):
        QuantNode("weight", 4, learn="pact")
    with pytest.raises(RuntimeError, match="no range yet"):
        QuantNode("activation", 4)(torch.ones(2))


# ------------------------------------------------------------------------------- steps 1 and 2


@pytest.fixture(scope="module")
def trained():
    return load_trained()


@pytest.fixture(scope="module")
def calib():
    return calibration_batch(200)


@pytest.fixture(scope="module")
def test_set():
    return load_mnist("test")


def test_initial_ranges_equal_min_max_of_activations_and_folded_weights(trained, calib):
    ranges = initial_ranges(trained, calib, observer="minmax")
    folded = fold_batchnorm(trained)
    acts = collect_activations(folded, calib, select=["relu1", "relu2", "relu3", "fc2"])
    for name, a in acts.items():
        assert ranges.activations[name] == pytest.approx((float(a.min()), float(a.max())))
    assert ranges.activations["input"] == pytest.approx((float(calib.min()), float(calib.max())))
    lo, hi = ranges.weights["conv2"]
    assert torch.equal(lo, folded.conv2.weight.amin(dim=(1, 2, 3), keepdim=True))
    assert torch.equal(hi, folded.conv2.weight.amax(dim=(1, 2, 3), keepdim=True))


def test_prepare_inserts_nodes_folds_bn_and_leaves_model_untouched(trained, calib):
    before = copy.deepcopy(trained.state_dict())
    qat = prepare_qat(trained, initial_ranges(trained, calib), 4, 4)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())
    assert quantization_points(trained) == ["input", "relu1", "relu2", "relu3", "fc2"]
    assert isinstance(qat.net.conv1, QATLayer) and qat.net.conv1.out_fq is None
    assert isinstance(qat.net.relu1, QATReLU) and isinstance(qat.net.bn1, nn.Identity)
    assert qat.net.fc2.out_fq is not None and qat.net.conv1.layer.bias is not None
    assert len(qat.nodes("weight")) == 4 and len(qat.nodes("activation")) == 5
    # the forward is the float network on fake-quantized weights and activations: check one layer by hand
    x = calib[:8]
    qat.eval()
    x_hat = fake_quant(x, qat.input_fq.qparams())
    w_hat = fake_quant(qat.net.conv1.layer.weight, qat.net.conv1.weight_fq.qparams())
    s_b = qat.net.conv1.weight_fq.qparams().s.flatten() * qat.input_fq.qparams().s     # int32 bias on s_w s_x
    b_hat = torch.round(qat.net.conv1.layer.bias / s_b) * s_b
    by_hand = fake_quant(torch.relu(nn.functional.conv2d(x_hat, w_hat, b_hat, padding=1)),
                         qat.net.relu1.out_fq.qparams())
    got = {}
    with torch.no_grad():
        qat.net.relu1.register_forward_hook(lambda m, a, out: got.setdefault("y", out))
        qat(x)
    assert torch.allclose(got["y"], by_hand, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(weight_bits=1), dict(weight_bits=9), dict(act_bits=0), dict(act_bits=16)])
def test_bad_bits_are_rejected_with_the_argument_name(trained, calib, kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        prepare_qat(trained, initial_ranges(trained, calib), **kw)


def test_unpreparable_layers_are_listed_by_name(calib):
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 4, 3))
    model.add_module("act", nn.Sigmoid())
    model.add_module("norm", nn.LayerNorm(26))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ValueError, match=r"act \(Sigmoid\), norm \(LayerNorm\)"):
        prepare_qat(model, None)
    with pytest.raises(ValueError, match="act"):
        initial_ranges(model, calib)
    with pytest.raises(TypeError, match="nn.Module"):
        prepare_qat(None, None)


def test_prepared_model_cannot_be_prepared_again(trained, calib):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 8, 8)
    with pytest.raises(ValueError, match="already"):
        prepare_qat(qat, None)


def test_initial_ranges_rejects_empty_calibration(trained):
    with pytest.raises(ValueError, match="empty"):
        initial_ranges(trained, torch.zeros(0, 1, 28, 28))


# ------------------------------------------------------------------------------- step 3


def test_training_moves_weights_and_ranges_and_logs(trained, calib, test_set):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 4, 4, observer="ema")
    w0 = qat.net.fc1.layer.weight.detach().clone()
    r0 = float(qat.net.relu1.out_fq.r_max)
    seen = []
    hist = qat_train(qat, load_mnist("train", 512), steps=6, eval_data=(test_set[0][:100], test_set[1][:100]),
                     eval_every=3, progress=False, callback=lambda rec, m: seen.append(rec["step"]),
                     freeze_act_after=3)
    assert hist.steps == 6 and [r["step"] for r in hist.records] == [3, 6] == seen
    assert not torch.equal(qat.net.fc1.layer.weight, w0)
    assert float(qat.net.relu1.out_fq.r_max) != r0
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in hist.records) and not qat.training


def test_diverging_run_stops_and_restores_the_model_before_that_step(trained, calib):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 8, 8)
    x, y = load_mnist("train", 128)
    bad = x[:64].clone()
    bad[0, 0, 0, 0] = float("nan")
    states = []
    loader = [(x[:64], y[:64]), (x[64:], y[64:]), (bad, y[:64])]
    with pytest.raises(ValueError, match="diverged at step 3"):
        qat_train(qat, loader, steps=5, eval_every=1, progress=False,
                  callback=lambda rec, m: states.append(copy.deepcopy(m.state_dict())))
    assert len(states) == 2
    assert all(torch.equal(v, states[-1][k]) for k, v in qat.state_dict().items())
    assert bool(torch.isfinite(qat(x[:4])).all())  # still usable


def test_huge_learning_rate_diverges_cleanly(trained, calib):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 8, 8)
    try:
        qat_train(qat, load_mnist("train", 256), steps=30, lr=1e30, progress=False)
    except ValueError as e:
        assert "diverged" in str(e)
    assert all(bool(torch.isfinite(p).all()) for p in qat.parameters())


def test_empty_data_and_wrong_model_are_clear_errors(trained, calib):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 8, 8)
    with pytest.raises(ValueError, match="data loader is empty"):
        qat_train(qat, [], steps=2, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        qat_train(qat, (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), steps=2, progress=False)
    with pytest.raises(TypeError, match="QATModel"):
        qat_train(trained, load_mnist("train", 64), steps=2, progress=False)


# ------------------------------------------------------------------------------- step 4


def _agreement(qat, qmodel, x):
    with torch.no_grad():
        return float((run_int(qmodel, x).argmax(1) == qat.eval()(x).argmax(1)).float().mean())


@pytest.mark.parametrize("config", [dict(weight_bits=4, act_bits=4), dict(weight_bits=8, act_bits=8,
                                    granularity=PerTensor()),
                                    dict(weight_bits=4, act_bits=4, weight_learn="lsq", act_learn="lsq"),
                                    dict(weight_bits=4, act_bits=4, act_learn="pact")])
def test_export_round_trip_on_the_integer_engine(trained, calib, test_set, config):
    qat = prepare_qat(trained, initial_ranges(trained, calib), **config)
    qat_train(qat, load_mnist("train", 640), steps=10, lr=1e-3, progress=False)
    qmodel = export(qat)
    assert isinstance(qmodel, IntModel) and qmodel.layers[0].q_w.dtype == torch.int8
    assert _agreement(qat, qmodel, test_set[0]) >= 0.99
    q_w, s, z = export_layer_weights(qat.net.conv2)
    assert torch.equal(q_w, qmodel.layers[[m.name for m in qmodel.layers].index("conv2")].q_w)
    assert int(q_w.abs().max()) <= 2 ** (config["weight_bits"] - 1) - 1


def test_export_errors(trained, calib):
    with pytest.raises(ValueError, match="never prepared"):
        export(trained)
    qat = prepare_qat(trained, initial_ranges(trained, calib), 8, 8)
    qmodel = export(qat)
    with pytest.raises(ValueError, match="already exported"):
        export(qmodel)
    assert isinstance(export(qat), IntModel)  # the QAT model itself stays usable


def test_save_load_round_trip(trained, calib, tmp_path):
    qat = prepare_qat(trained, initial_ranges(trained, calib), 4, 4, weight_learn="lsq", act_learn="pact")
    save_qat(qat, tmp_path / "q.pt")
    back = load_qat(tmp_path / "q.pt")
    x = calib[:16]
    assert torch.equal(back(x), qat.eval()(x))


# ------------------------------------------------------------------------------- shipped checkpoints


@pytest.mark.parametrize("tag,key", [("w4a4", "qat"), ("w2a2", "qat_lsq")])
def test_shipped_checkpoints_reach_their_recorded_accuracy(tag, key, test_set, trained):
    table = json.loads((data_dir() / "qat_table.json").read_text())
    row = next(r for r in table["rows"] if r["config"] == tag.upper())
    qat = load_qat(data_dir() / f"qat_{tag}.pt")
    x, y = test_set
    acc_fq = evaluate(qat, x, y)
    qmodel = export(qat)
    acc_int = float((run_int(qmodel, x).argmax(1) == y).float().mean())
    assert acc_int == pytest.approx(row[key], abs=1e-9) and acc_fq == pytest.approx(row[f"{key}_fake_quant"])
    if tag == "w4a4":
        assert acc_int >= evaluate(trained, x, y) - 0.01  # the measured goal: within 1 point of FP32
    else:
        assert row["ptq_best"] < 0.5 < acc_int            # W2A2: PTQ collapses, QAT recovers


# ------------------------------------------------------------------------------- the lab's explorers


@pytest.fixture(scope="module")
def agg_backend():
    import matplotlib

    old = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield
    matplotlib.use(old)


def test_fake_quant_explorer_draws_the_library_node_and_its_gradients(agg_backend):
    from quantlab.viz.qat import FakeQuantExplorer

    ex = FakeQuantExplorer()
    ex.controls["bits"].value = 2
    r, r_hat = (np.asarray(a) for a in ex.l_f.get_data())
    p = qparams_from_range(ex.controls["r_min"].value, ex.controls["r_max"].value, 2)
    assert np.allclose(r_hat, fake_quant(torch.tensor(r), p).numpy())
    assert len(np.unique(r_hat.round(6))) == 4                   # 2 bits: four levels
    g = np.asarray(ex.l_g.get_data()[1])
    assert set(np.unique(g)) == {0.0, 1.0}
    g_s = np.asarray(ex.l_s.get_data()[1])
    v = r.astype(np.float64) / float(p.s)
    q, lo, hi = np.round(v), p.q_min - int(p.z), p.q_max - int(p.z)   # the same node: grid shifted by z
    assert np.allclose(g_s, np.where(q < lo, lo, np.where(q > hi, hi, q - v)), atol=1e-5)
    assert ex.n_updates >= 2


def _tiny_trace():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 32 * 16 * 9, generator=gen).numpy() * 0.1
    return {"trace_steps": np.array([0, 5, 10]), "conv2_weights": w, "conv2_s": np.full((3, 32), 0.1),
            "curve_steps": np.array([5, 10]), "curve_loss": np.array([1.0, 0.5]),
            "curve_test_acc": np.array([0.5, 0.6]), "weight_bits": np.array(2), "act_bits": np.array(2)}


def test_training_explorer_slices_snapshots_and_runs_live(agg_backend, trained, calib, test_set):
    from quantlab.viz.qat import TrainingExplorer, snap_fraction

    live = (lambda: prepare_qat(trained, initial_ranges(trained, calib), 4, 4), load_mnist("train", 256),
            (test_set[0][:50], test_set[1][:50]))
    ex = TrainingExplorer(_tiny_trace(), live=live, live_steps=4)
    ex.controls["step"].value = 10
    heights = np.asarray(ex.h.get_data().values)
    counts = np.stack([np.histogram(w / 0.1, ex.edges)[0] for w in _tiny_trace()["conv2_weights"]])
    assert np.allclose(heights, counts[2] / counts.max())              # snapshot 2, relative to the peak
    assert snap_fraction(np.array([0.05, 0.5, 1.95, -1.0])) == 0.75
    ex.run_live()                                                   # synchronously, as the button's thread does
    assert [r["step"] for r in ex.live_records] == [1, 2, 3, 4]
    assert len(ex.l_live_acc.get_data()[0]) == 4 and not ex.button.disabled


def test_export_explorer_shows_the_exported_integers(agg_backend, trained, calib):
    from quantlab.viz.qat import ExportExplorer

    qat = prepare_qat(trained, initial_ranges(trained, calib), 4, 4)
    qmodel = export(qat)
    ex = ExportExplorer(qmodel, layer="conv2")
    ex.controls["channel"].value = 5
    conv2 = next(m for m in qmodel.layers if m.name == "conv2")
    assert np.array_equal(ex.img.get_array(), conv2.q_w[5].reshape(16, 9).numpy())
    n_full = ex.n_full_draws
    ex.controls["layer"].value = "fc1"
    fc1 = next(m for m in qmodel.layers if m.name == "fc1")
    assert np.array_equal(ex.img.get_array(), fc1.q_w[5].reshape(32, 49).numpy())
    assert ex.n_full_draws == n_full                                   # a layer switch is a blit too
    ex.controls["layer"].value = "fc2"
    assert ex.controls["channel"].max == 9
    share = [b.get_height() for b in ex.bars]
    fc2 = next(m for m in qmodel.layers if m.name == "fc2")
    assert share == pytest.approx([(fc2.q_w == k).float().mean().item() for k in range(-7, 8)])
