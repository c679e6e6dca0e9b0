r"""Nonlinear quantization (section 9.3.1): grids whose levels are not evenly spaced.

The text: "the weights and activation values of actual deep neural networks are usually uneven, so
theoretically higher accuracy can be achieved by using nonlinear quantization, but the computational
complexity of nonlinear quantization is higher in practical inference, and linear quantization is usually
used." This package makes both halves measurable:

* :mod:`.log` — logarithmic (power-of-two) levels 0, ±s·2^-k, rounded in the linear or the log domain;
* :mod:`.kmeans` — k-means codebooks (Deep Compression), per tensor or per channel;
* :mod:`.nf4` — NormalFloat quantile grids (QLoRA's NF4), per block of 64;
* :mod:`.model` — all of them against linear at equal bits on a tensor or a model (weight-only), bytes
  and lookups counted; k-means fine-tuning of the centroids with fixed codes;
* :mod:`.mac` — why a codebook cannot feed an integer MAC, and power-of-two weights as shift-and-add.
"""

from .kmeans import (
    INITS,
    Codebook,
    codebook_dequantize,
    codebook_size_bytes,
    kmeans_codebook,
    kmeans_init,
    lloyd_step,
    nearest_index,
)
from .log import ROUNDINGS, fake_pow2, pow2_dequantize, pow2_levels, pow2_quantize, pow2_scale, pow2_size_bytes
from .mac import codebook_dot, linear_int_dot, pow2_int_weights, shift_add_dot
from .model import METHODS, finetune_centroids, kmeans_books, quantize_model_weights, quantize_weight
from .nf4 import fake_nf, nf_dequantize, nf_quantize, nf_size_bytes, normal_float_levels

__all__ = [
    "pow2_levels", "pow2_scale", "pow2_quantize", "pow2_dequantize", "fake_pow2", "pow2_size_bytes", "ROUNDINGS",
    "Codebook", "nearest_index", "kmeans_init", "lloyd_step", "kmeans_codebook", "codebook_dequantize",
    "codebook_size_bytes", "INITS",
    "normal_float_levels", "nf_quantize", "nf_dequantize", "fake_nf", "nf_size_bytes",
    "METHODS", "quantize_weight", "quantize_model_weights", "kmeans_books", "finetune_centroids",
    "linear_int_dot", "codebook_dot", "pow2_int_weights", "shift_add_dot",
]
