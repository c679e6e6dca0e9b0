"""The device rule for the modules built after it (correction, QAT, nonlinear, binary, GPTQ, SmoothQuant, the
transformer code) and for the core tensor functions: each call on the ``device`` fixture (cpu, the simulated
second device ``cpu:1``, cuda when present) equals the same call on the CPU, and its tensors come back on the
device of the inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from simdevice import is_on
from torch import nn

from quantlab import binary as qb
from quantlab import calibration as qcal
from quantlab import correction as qc
from quantlab import engine as qe
from quantlab import gptq as qg
from quantlab import linear as ql
from quantlab import metrics as qm
from quantlab import models as qmod
from quantlab import nonlinear as qn
from quantlab import packing as qp
from quantlab import ptq as qptq
from quantlab import qat as qq
from quantlab import smoothquant as qs
from quantlab import transformer_quant as qt
from quantlab.binary_train import recalibrate_batchnorm
from quantlab.granularity import (
    PerChannel,
    PerGroup,
    PerTensor,
    choose_qparams,
    fake_quantize_tensor,
    quantize_tensor,
    range_of,
)
from quantlab.models import SmallCNN, fold_batchnorm
from quantlab.ptq import calibrate_activations


@pytest.fixture(scope="module")
def cnn(random_cnn):
    g = torch.Generator().manual_seed(0)
    return random_cnn, torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g)


def same(out, ref, device, what, atol=1e-4):
    """out (from the device) equals ref (from the CPU); every tensor of out is on ``device``."""
    if isinstance(ref, torch.Tensor):
        assert is_on(out.device, device), f"{what}: on {out.device}, not {device}"
        assert torch.allclose(out.detach().cpu().double(), ref.detach().double(), atol=atol), what
    elif isinstance(ref, nn.Module):
        sd_out, sd_ref = out.state_dict(), ref.state_dict()
        assert sd_out.keys() == sd_ref.keys(), what
        for name in sd_ref:
            same(sd_out[name], sd_ref[name], device, f"{what}.{name}", atol)
    elif isinstance(ref, dict):
        assert out.keys() == ref.keys(), what
        for k in ref:
            same(out[k], ref[k], device, f"{what}[{k}]", atol)
    elif isinstance(ref, (tuple, list)):
        assert len(out) == len(ref), what
        for i, (a, b) in enumerate(zip(out, ref)):
            same(a, b, device, f"{what}[{i}]", atol)
    elif isinstance(ref, np.ndarray):                   # a CPU-only step (NumPy) returns NumPy on any device
        np.testing.assert_allclose(out, ref, atol=atol, err_msg=what)
    elif isinstance(ref, float):
        assert out == pytest.approx(ref, abs=atol), what
    else:
        assert out == ref, what


def both(fn, device, *args):
    """fn on the CPU arguments, then on copies moved to ``device``: (result on device, result on CPU)."""
    move = lambda a: a.to(device) if isinstance(a, torch.Tensor) else copy.deepcopy(a).to(device)   # noqa: E731
    torch.manual_seed(0)
    ref = fn(*args)
    torch.manual_seed(0)
    return fn(*(move(a) if isinstance(a, (torch.Tensor, nn.Module)) else a for a in args)), ref


# ------------------------------------------------------------------------------------------- correction

CORRECTION = {
    "weight_quantizer+text rule": lambda m, x, y: qc.weight_quantizer(4, rule="text")(m),
    "empirical_bias_correction": lambda m, x, y: qc.empirical_bias_correction(m, qc.weight_quantizer(4), x),
    "data_free_bias_correction": lambda m, x, y: qc.data_free_bias_correction(m, qc.weight_quantizer(4)),
    "channel_means": lambda m, x, y: qc.channel_means(qc.weight_quantizer(4)(m), x, ["conv1", "fc1"]),
    "evaluate_quantized(int)": lambda m, x, y: qc.evaluate_quantized(
        qc.int_quantizer(calibrate_activations(m, x))(m), x, y),     # labels stay on the CPU
    "int_quantizer with weight correction": lambda m, x, y: qc.evaluate_quantized(
        qc.int_quantizer(calibrate_activations(m, x), 4, rule="text")(m), x, y),
}


@pytest.mark.parametrize("call", CORRECTION.values(), ids=CORRECTION.keys())
def test_correction(cnn, device, call):
    model, x, y = cnn
    out, ref = both(call, device, model, x, y.clone())
    same(out, ref, device, "correction")


def test_weight_correction_tensors(device):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 3, 3, generator=g)
    w_hat = w + 0.05 * torch.randn(w.shape, generator=g)
    out, ref = both(lambda a, b: qc.weight_correction(a, b, "text"), device, w, w_hat)
    same(out, ref, device, "weight_correction")


# ----------------------------------------------------------------------------------------------- QAT


def _qat(model, x, y, steps):
    qat = qq.prepare_qat(model, qq.initial_ranges(model, x), 4, 4)
    if steps:
        qq.qat_train(qat, (x, y), steps=steps, batch_size=16, eval_every=steps, progress=False)
    return qat


def test_qat_prepare_train_export(cnn, device):
    model, x, y = cnn
    (qat, logits), (qat_ref, logits_ref) = both(lambda m, xx: (q := _qat(m, xx, y, 0), q(xx)), device, model, x)
    assert all(is_on(t.device, device) for t in list(qat.parameters()) + list(qat.buffers()))
    same(logits, logits_ref, device, "prepared forward")
    trained, trained_ref = both(lambda m, xx: _qat(m, xx, y, 3), device, model, x)  # labels on the CPU
    same(trained, trained_ref, device, "after 3 steps", atol=1e-3)
    exported, exported_ref = qq.export(trained), qq.export(trained_ref)   # the integer model lives on the CPU
    for a, b in zip(exported.layers, exported_ref.layers):
        if hasattr(a, "q_w"):
            assert is_on(a.q_w.device, "cpu") and int((a.q_w.int() - b.q_w.int()).abs().max()) <= 1


def test_qat_train_moves_a_cpu_model_to_the_requested_device(cnn, device):
    model, x, y = cnn
    runs = []
    for dev in (None, device):                                   # None: train where the model is (the CPU)
        torch.manual_seed(0)
        qat = _qat(model, x, y, 0)
        hist = qq.qat_train(qat, (x, y), steps=3, batch_size=16, eval_data=(x, y), eval_every=3, device=dev,
                            progress=False)
        runs.append((qat, hist.records[-1]))
    (ref, rec_ref), (qat, rec) = runs
    assert all(is_on(p.device, device) for p in qat.parameters())
    same(qat, ref, device, "qat_train(device=...)", atol=1e-3)
    assert rec["loss"] == pytest.approx(rec_ref["loss"], abs=1e-4) and rec["test_acc"] == rec_ref["test_acc"]


# ------------------------------------------------------------------------------------------ nonlinear


@pytest.mark.parametrize("method", ["log", "kmeans", "nf"])
def test_nonlinear_model_weights(cnn, device, method):
    model = cnn[0]
    out, ref = both(lambda m: qn.quantize_model_weights(m, method, 3 if method == "kmeans" else 4), device, model)
    same(out, ref, device, method)


def test_finetune_centroids_with_labels_on_the_cpu(cnn, device):
    model, x, y = cnn
    out, ref = both(lambda m, xx: qn.finetune_centroids(m, qn.kmeans_books(m, 3), xx, y, steps=2, batch_size=16),
                    device, model, x)
    same(out[0], ref[0], device, "finetuned model")
    assert out[1].keys() == ref[1].keys()
    for name, book in ref[1].items():
        same((out[1][name].codes, out[1][name].centroids), (book.codes, book.centroids), device, f"books[{name}]")
    same(out[2], ref[2], device, "losses")


@pytest.mark.parametrize("call", [lambda w: qn.fake_pow2(w, 4), lambda w: qn.fake_nf(w, 4),
                                  lambda w: qn.kmeans_codebook(w, 3).dequantize(), lambda w: qn.pow2_quantize(w, 4)],
                         ids=["fake_pow2", "fake_nf", "kmeans_codebook", "pow2_quantize"])
def test_nonlinear_tensors(device, call):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    out, ref = both(call, device, w)
    same(out, ref, device, "nonlinear")


# --------------------------------------------------------------------------------------------- binary


def test_binary_models(cnn, device):
    model, x, _ = cnn
    out, ref = both(lambda m, xx: qb.binarize_model(m, activations=True)(xx), device, model, x)
    same(out, ref, device, "binarize_model")
    out, ref = both(lambda m, xx: qb.pack_model(fold_batchnorm(qb.binarize_model(m, activations=True)))(xx),
                    device, model, x)                  # the packed kernel runs on the CPU and returns here
    same(out, ref, device, "pack_model")
    out, ref = both(lambda m, xx: recalibrate_batchnorm(qb.binarize_model(m), xx), device, model, x)
    same(out, ref, device, "recalibrate_batchnorm")


def test_binary_tensors(device):
    g = torch.Generator().manual_seed(0)
    a = torch.where(torch.rand(8, 100, generator=g) < 0.5, -1.0, 1.0)
    w = torch.where(torch.rand(6, 100, generator=g) < 0.5, -1.0, 1.0)
    same(*both(qb.binary_matmul, device, a, w), device, "binary_matmul")
    same(*both(qb.binarize_weights, device, torch.randn(6, 100, generator=g)), device, "binarize_weights")
    x = torch.where(torch.rand(2, 3, 8, 8, generator=g) < 0.5, -1.0, 1.0)
    k = torch.where(torch.rand(4, 3, 3, 3, generator=g) < 0.5, -1.0, 1.0)
    same(*both(lambda xx, kk: qb.binary_conv2d(xx, kk, padding=1), device, x, k), device, "binary_conv2d")


# ------------------------------------------------------------------------------- GPTQ and SmoothQuant


@pytest.mark.parametrize("call", [lambda w, x: qg.gptq_quantize(w, x, 4, 32), lambda w, x: qg.rtn_quantize(w, 4, 32),
                                  lambda w, x: qg.layer_error(w, qg.rtn_quantize(w, 4, 32), x),
                                  lambda w, x: qs.w8a8_linear_output(x, w, 0.5),
                                  lambda w, x: qs.smooth_scales(x.abs().amax(0), w.abs().amax(0))],
                         ids=["gptq", "rtn", "layer_error", "w8a8_linear_output", "smooth_scales"])
def test_gptq_and_smoothquant_tensors(device, call):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 64, generator=g), torch.randn(128, 64, generator=g)
    out, ref = both(call, device, w, x)
    same(out, ref, device, "tensors", atol=1e-3)


def test_transformer_calls(device):
    pytest.importorskip("transformers")
    from test_transformer_quant import tiny_llama

    class Tok:
        def __call__(self, text, return_tensors="pt"):
            return {"input_ids": torch.tensor([[ord(c) % 64 for c in text]])}

    def run(m, ids):
        stats = qt.input_absmax(m, lambda mm: mm(ids))
        smooth = qs.smoothquant(m, stats, 0.5)
        return {"weights": qt.quantize_linear_weights(m, 4, PerGroup(8))(ids).logits, "absmax": stats,
                "smooth": smooth(ids).logits, "w8a8": qs.w8a8(smooth)(ids).logits,
                "ppl": qt.perplexity(m, Tok(), "hello quantization")}        # the tokenizer's ids: on the CPU

    out, ref = both(run, device, tiny_llama(), torch.arange(24)[None] % 64)
    same(out, ref, device, "transformer", atol=1e-4)


def test_embed(device):
    pytest.importorskip("transformers")
    from transformers import BatchEncoding, BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32)).eval()

    def tok(sentences, padding=True, truncation=True, return_tensors="pt", **kw):
        ids = [[1 + (ord(c) % 48) for c in s] for s in sentences]
        n = max(map(len, ids))
        return BatchEncoding({"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                              "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])})

    out, ref = both(lambda m: qt.embed(m, tok, ["a cat", "a much longer dog"]), device, bert)
    same(out, ref, device, "embed")


def test_per_channel_granularity_on_device(device):
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    out, ref = both(lambda t: qt.fake_quantize_weight(t, 4, PerChannel(0)), device, w)
    same(out, ref, device, "fake_quantize_weight")


# ------------------------------------------------------------ core tensor functions (the text's formulas)

CORE = {
    "quantize": lambda r: ql.quantize(r, 0.05, 3, -128, 127),
    "fake_quantize per-channel s": lambda r: ql.fake_quantize(r, r.abs().amax(1, keepdim=True) / 127, 0, -127, 127),
    "dequantize": lambda r: ql.dequantize(ql.quantize(r, 0.05, 3, -128, 127), 0.05, 3),
    "scale_zero_point": lambda r: ql.scale_zero_point(r.min(), r.max(), -128, 127),
    "range_of per-channel": lambda r: range_of(r, PerChannel(0)),
    "choose_qparams": lambda r: tuple(choose_qparams(r, 4, PerChannel(0))),
    "quantize_tensor per-group": lambda r: quantize_tensor(r, 4, PerGroup(16))[0],
    "fake_quantize_tensor": lambda r: fake_quantize_tensor(r, 3, PerTensor(), symmetric=True),
    "mse / sqnr_db": lambda r: (qm.mse(r, r.round()), qm.sqnr_db(r, r.round())),
    "per_channel_sqnr": lambda r: qm.per_channel_sqnr(r, r.round()),
    "pack/unpack_bits": lambda r: qp.unpack_bits(qp.pack_bits(ql.quantize(r, 0.2, 0, -8, 7), 4, -8), 4, -8, r.numel()),
    "histogram (NumPy arrays)": lambda r: qcal.histogram(r, 64),
    "calibrate kl": lambda r: tuple(qcal.calibrate(r, "kl", 8)),
}


@pytest.mark.parametrize("call", CORE.values(), ids=CORE.keys())
def test_core_tensor_functions(device, call):
    r = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    out, ref = both(call, device, r)
    if isinstance(ref, torch.Tensor) and not ref.is_floating_point():
        assert torch.equal(out.cpu(), ref)                                       # integers exactly
    same(out, ref, device, "core")


# ---------------------------------------------- the remaining public tensor and model functions, in one sweep

_g = torch.Generator().manual_seed(3)
_W = torch.randn(6, 4, 3, 3, generator=_g)
_A = torch.randn(8, 6, 5, 5, generator=_g)
_X = torch.randn(32, 12, generator=_g)
_QX = torch.randint(0, 256, (2, 4, 6, 6), generator=_g)
_QW = torch.randint(-127, 128, (6, 4, 3, 3), generator=_g)
_QI = torch.randint(0, 256, (32, 12), generator=_g)
SWEEP = {
    "requantize": (lambda acc: qe.requantize(acc, *qe.requant_multiplier(0.01), 3, -128, 127),
                   torch.randint(-20000, 20000, (4, 5), generator=_g)),
    "quantize_bias": (lambda b: qe.quantize_bias(b, torch.full((6,), 0.01), 0.02), torch.randn(6, generator=_g)),
    "int_conv2d": (lambda qx, qw: qe.int_conv2d(qx, 5, qw, 0, padding=1), _QX, _QW),
    "int_linear": (lambda qx, qw: qe.int_linear(qx, 3, qw, 0), _QX.flatten(1)[:, :20], _QW.flatten(1)[:, :20]),
    "channel_mean": (qc.channel_mean, _A),
    "bias_correction_term": (lambda a: qc.bias_correction_term(a, a.round()), _A),
    "correction_factors": (lambda w: qc.correction_factors(w, w.round()), _W),
    "scale_shift": (lambda w: qc.scale_shift(w, w * 0.9 + 0.01), _W),
    "clipped_gaussian_mean": (lambda mu: qc.clipped_gaussian_mean(mu, mu.abs() + 0.5), _X[0]),
    "zero_point_output": (lambda w, x: qc.zero_point_output(nn.Conv2d(4, 6, 3).to(x.device), x,
                                                            ql.quantize(w, 0.05, 2, -128, 127).float(),
                                                            0.05, 2), _W, _A[:, :4]),
    "fake_quant (QAT node)": (lambda r: qq.fake_quant(r, choose_qparams(r, 4, PerChannel(0))), _W),
    "pow2_scale / pow2_dequantize": (lambda r: qn.pow2_dequantize(*qn.pow2_quantize(r, 4)[:2], 4), _X),
    "nearest_index": (lambda r: qn.nearest_index(r, torch.linspace(-2, 2, 8).to(r.device)), _X),
    "kmeans_init + lloyd_step": (lambda r: qn.lloyd_step(r, qn.kmeans_init(r, 4)), _X),
    "nf_dequantize": (lambda r: qn.nf_dequantize(*qn.nf_quantize(r, 4)[:2], 4), _X),
    "quantize_weight": (lambda r: qn.quantize_weight(r, "kmeans", 3)[0], _X),
    "linear_int_dot": (lambda x: qn.linear_int_dot(torch.arange(12).to(x.device) % 7, 3, x), _QI),
    "codebook_dot": (lambda x: qn.codebook_dot(torch.arange(12).to(x.device) % 4,
                                               torch.linspace(-1, 1, 4).to(x.device), x), _QI),
    "codebook_dot, centroids a list": (lambda x: qn.codebook_dot(torch.arange(12).to(x.device) % 4,
                                                                 [-1.0, -0.2, 0.3, 1.0], x), _QI),
    "shift_add_dot": (lambda r, x: qn.shift_add_dot(qn.pow2_quantize(r[0], 4)[0], x, 4), _X, _QI),
    "binarize / sign_ste / binary_weight_scale": (lambda w: (qb.binarize(w), qb.sign_ste(w),
                                                             qb.binary_weight_scale(w)), _W),
    "pack_signs (NumPy)": (lambda w: qp.pack_signs(qb.binarize(w.flatten(1))), _W),
    "hessian": (qg.hessian, _X),
    "expected_layer_inputs, BatchNorm without affine": (qc.expected_layer_inputs, nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, affine=False), nn.ReLU(), nn.Conv2d(3, 2, 3)).eval()),
    "embedding_agreement": (lambda e: qt.embedding_agreement(e, e + 0.01), _X),
}


@pytest.mark.parametrize("call_args", SWEEP.values(), ids=SWEEP.keys())
def test_public_functions_sweep(device, call_args):
    call, *args = call_args
    out, ref = both(call, device, *args)
    same(out, ref, device, "sweep")


def test_fit_trains_on_the_cpu_and_returns_on_the_data_device(device):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g)
    out, ref = both(lambda xx, yy: qmod.fit(SmallCNN, xx, yy, epochs=1, lr=1e-3, progress=False), device, x, y)
    same(out, ref, device, "fit", atol=0)                  # bit for bit: the same CPU training either way


SWEEP_MODELS = {
    "with_outlier_channel": lambda m, x: qmod.with_outlier_channel(m, "conv1", 0, 8.0),
    "prefix_minmax_ranges": lambda m, x: {str(k): v for k, v in qptq.prefix_minmax_ranges(m, x, [8, 16]).items()},
    "model_size_bytes / state_size_bytes": lambda m, x: (qm.model_size_bytes(m, 4), qptq.state_size_bytes(m)),
    "expected_layer_inputs": lambda m, x: qc.expected_layer_inputs(m),
    "effective_weights": lambda m, x: qc.effective_weights(qc.weight_quantizer(4)(m)),
    "apply_bias_terms": lambda m, x: qc.apply_bias_terms(m, {"fc2": torch.ones(10)}),
    "float_model / export_layer_weights": lambda m, x: (lambda q: (qq.float_model(q),
                                                                   qq.export_layer_weights(q.net.conv1)))(
        qq.prepare_qat(m, qq.initial_ranges(m, x), 4, 4)),
    "packed_size_bytes": lambda m, x: qb.packed_size_bytes(
        qb.pack_model(fold_batchnorm(qb.binarize_model(m, activations=True)))),
}


@pytest.mark.parametrize("call", SWEEP_MODELS.values(), ids=SWEEP_MODELS.keys())
def test_public_model_functions_sweep(cnn, device, call):
    model, x, _ = cnn
    out, ref = both(call, device, model, x[:16])
    same(out, ref, device, "model sweep")


def test_save_and_load_qat_onto_the_cpu(cnn, device, tmp_path):
    model, x, _ = cnn
    m = copy.deepcopy(model).to(device)
    qat = qq.prepare_qat(m, qq.initial_ranges(m, x.to(device)), 4, 4)
    qq.save_qat(qat, tmp_path / "q.pt")
    loaded = qq.load_qat(tmp_path / "q.pt")                 # saved from any device, loads on the CPU
    saved = qat.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    for k, v in loaded.state_dict().items():
        assert is_on(v.device, "cpu") and torch.equal(v, saved[k].cpu()), k
    onto = qq.load_qat(tmp_path / "q.pt", base=copy.deepcopy(model).to(device))   # onto a model on the device
    assert all(is_on(t.device, device) for t in list(onto.parameters()) + list(onto.buffers()))
    same(onto.eval()(x[:8].to(device)), loaded(x[:8]), device, "load_qat(base on the device)")
