"""Lab 09's table: weight schemes, GPTQ vs RTN and SmoothQuant on two pretrained transformers (CPU, offline).

    .venv/bin/python benchmarks/transformer_table.py            # both models (MiniLM ≈ 2 min, SmolLM2 ≈ 5 min)
    .venv/bin/python benchmarks/transformer_table.py --part minilm

Writes data/transformer_table.json (the numbers the lab and README show) and data/transformer_layers.npz
(a few layers' weights and captured inputs, float16, for the lab's explorers and the GPTQ tests).
MiniLM: sentences of data/transformer_sentences.tsv, every third one (80) calibrates GPTQ, the other 160 are
evaluated (embedding cosine vs FP32 and nearest-neighbour agreement). SmolLM2: perplexity on
data/transformer_text.txt; SmoothQuant's activation absmax is calibrated on the first 60 sentences.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantlab.gptq import gptq_quantize
from quantlab.granularity import PerChannel, PerGroup, PerTensor
from quantlab.models import activation_hooks, replace_layers
from quantlab.smoothquant import smoothquant, w8a8
from quantlab.transformer_quant import (
    DATA_DIR,
    embed,
    embedding_agreement,
    input_absmax,
    load_minilm,
    load_sentences,
    load_smollm2,
    load_text,
    perplexity,
    quantize_linear_weights,
)

TABLE = DATA_DIR / "transformer_table.json"
LAYERS = DATA_DIR / "transformer_layers.npz"
MINILM_LAYER = "encoder.layer.0.attention.output.dense"
SMOL_LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj", "model.layers.20.self_attn.o_proj"]
SCHEMES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0), "group-32": PerGroup(32),
           "group-64": PerGroup(64), "group-128": PerGroup(128)}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def _update(path: Path, new: dict):
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(new)
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def _update_npz(arrays: dict):
    old = dict(np.load(LAYERS)) if LAYERS.exists() else {}
    old.update({k: np.asarray(v, dtype=np.float16) for k, v in arrays.items()})
    np.savez_compressed(LAYERS, **old)


@torch.no_grad()
def linear_inputs(model, tok, sentences) -> dict:
    """{Linear name: (T, C_in) inputs} over the sentences, one sentence per forward (no padding tokens)."""
    xs: dict[str, list] = {}
    with activation_hooks(model, lambda n, a: xs.setdefault(n, []).append(a.reshape(-1, a.shape[-1])),
                          nn.Linear, inputs=True):
        for s in sentences:
            model(**tok(s, return_tensors="pt"))
    return {n: torch.cat(v) for n, v in xs.items()}


def minilm_part():
    torch.manual_seed(0)
    model, tok = load_minilm()
    _, sentences = load_sentences()
    calib, held = sentences[::3], [s for i, s in enumerate(sentences) if i % 3]
    ref = embed(model, tok, held)
    rows = {}
    for bits in (8, 4, 3):
        for name, g in SCHEMES.items():
            agree = embedding_agreement(ref, embed(quantize_linear_weights(model, bits, g), tok, held))
            rows[f"int{bits} {name}"] = agree
            log("minilm", bits, name, agree)
    xs = linear_inputs(model, tok, calib)
    for bits in (4, 3):
        def swap(name, layer, bits=bits):
            layer.weight.copy_(gptq_quantize(layer.weight, xs[name], bits, 128))
            return layer
        with torch.no_grad():
            q = replace_layers(model, swap, types=nn.Linear)
        rows[f"int{bits} group-128 GPTQ"] = embedding_agreement(ref, embed(q, tok, held))
        log("minilm gptq", bits, rows[f"int{bits} group-128 GPTQ"])
    w = model.get_submodule(MINILM_LAYER).weight.detach()
    row_absmax = w.abs().amax(1)
    gen = torch.Generator().manual_seed(0)  # tokens drawn from all topics (the sentence file is sorted by topic)
    x_held = linear_inputs(model, tok, held)[MINILM_LAYER]
    x_held = x_held[torch.randperm(len(x_held), generator=gen)[:128]]
    x_calib = xs[MINILM_LAYER][torch.randperm(len(xs[MINILM_LAYER]), generator=gen)[:384]]
    _update(TABLE, {"minilm": rows, "minilm_eval_sentences": len(held), "minilm_calib_sentences": len(calib),
                    "minilm_outlier": {"layer": MINILM_LAYER,
                                       "absmax_over_median_row_absmax": float(w.abs().max() / row_absmax.median())}})
    _update_npz({"minilm_w": w, "minilm_x_calib": x_calib, "minilm_x_held": x_held})


def smollm2_part():
    torch.manual_seed(0)
    t0 = time.time()
    model, tok = load_smollm2()
    log(f"smollm2 loaded in {time.time() - t0:.1f} s")
    text = load_text()
    _, sentences = load_sentences()
    n_tokens = int(tok(text, return_tensors="pt")["input_ids"].shape[1])
    t0 = time.time()
    rows = {"reference (dequantized Q4_1)": perplexity(model, tok, text)}
    log(f"reference ppl {rows['reference (dequantized Q4_1)']:.2f} ({time.time() - t0:.1f} s)")
    for bits, name in [(8, "per-tensor"), (8, "per-channel"), (4, "per-tensor"), (4, "per-channel"),
                       (4, "group-32"), (4, "group-128")]:
        rows[f"int{bits} {name}"] = perplexity(quantize_linear_weights(model, bits, SCHEMES[name]), tok, text)
        log("smollm2", bits, name, rows[f"int{bits} {name}"])
    calib = " ".join(sentences[:60])
    stats = input_absmax(model, lambda m: m(**tok(calib, return_tensors="pt")))
    ratio = {n: float(v.max() / v.median()) for n, v in stats.items()}
    worst = max(ratio, key=ratio.get)
    rows["W8A8 per-tensor activations"] = perplexity(w8a8(model), tok, text)
    log("w8a8", rows["W8A8 per-tensor activations"])
    for alpha in (0.25, 0.5, 0.75):
        rows[f"W8A8 + SmoothQuant alpha={alpha}"] = perplexity(w8a8(smoothquant(model, stats, alpha)), tok, text)
        log("w8a8 sq", alpha, rows[f"W8A8 + SmoothQuant alpha={alpha}"])
    _update(TABLE, {"smollm2": rows, "smollm2_text_tokens": n_tokens, "smollm2_outliers": {
        "median_ratio": float(np.median(list(ratio.values()))), "max_ratio": ratio[worst], "max_layer": worst,
        "max_abs_input": float(stats[worst].max())}})
    names = [n for n in stats if n.endswith(("q_proj", "o_proj", "gate_proj", "down_proj"))]
    arrays = {f"smol_absmax/{n}": stats[n] for n in names}
    xs = linear_inputs(model, tok, sentences[:6])
    for n in SMOL_LAYERS:
        w = model.get_submodule(n).weight.detach()
        arrays.update({f"smol_x/{n}": xs[n][:64], f"smol_w/{n}": w[:64], f"smol_wabsmax/{n}": w.abs().amax(0)})
    _update_npz(arrays)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["minilm", "smollm2", "all"], default="all")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("minilm", "all"):
        minilm_part()
    if args.part in ("smollm2", "all"):
        smollm2_part()
    log("wrote", TABLE, LAYERS)
