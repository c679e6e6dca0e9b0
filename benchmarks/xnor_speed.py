"""XNOR-popcount GEMM vs float32 matrix multiplication on the same ±1 matrices, side by side in one run.

    .venv/bin/python benchmarks/xnor_speed.py [--repeats 7] [--numpy-path]

For each (M, N, K): A (M, K) and W (N, K) random ±1; times of A @ W^T in float32 with NumPy (BLAS) and torch, and
with quantlab's packed kernel (numba: popcount instruction, tiled, multi-threaded) on pack_signs(A), pack_signs(W).
Each of --repeats rounds times all three one after another (a shared machine's load then hits them alike), each after a
0.2 s pause (the previous thread pool stops spinning) and an untimed warm call; the best round
of each is reported. Prints the speed-ups,
whether the packed result equals the float product exactly, the operand memory (float32 vs packed words),
the packing time (separately: weights are packed once, activations once per layer), and, once, the first-call
time of the kernel (JIT compile, or loading numba's on-disk cache).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

SHAPES = [(1024, 1024, 1024), (256, 256, 4096), (64, 4096, 4096), (1000, 1000, 1000)]   # last: ragged K


def first_call_seconds() -> tuple[float, str]:
    """Import + first call of the compiled kernel on a tiny problem; says whether numba's cache was used."""
    t0 = time.perf_counter()
    from quantlab import binary_kernel as bk
    from quantlab.packing import pack_signs

    if not bk.HAVE_NUMBA:
        return time.perf_counter() - t0, "numba missing: NumPy slow path"
    from quantlab import _xnor_numba as nb

    a = pack_signs(np.ones((1, 70)))
    bk.xnor_gemm_numba(a, a, 70)
    bk.xnor_gemm_numba(np.repeat(a, 2048, 0), np.repeat(a, 2048, 0), 70)     # the parallel variant too
    hits = sum(sum(f.stats.cache_hits.values()) for f in (nb._gemm_serial, nb._gemm_parallel))
    return time.perf_counter() - t0, "loaded from numba's cache" if hits else "JIT-compiled (cache written)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--numpy-path", action="store_true", help="also time the plain-NumPy XNOR path (slow)")
    args = ap.parse_args(argv)
    seconds, how = first_call_seconds()
    from quantlab.binary_train import time_binary_gemm

    numba_threads = __import__("numba").get_num_threads() if "numba" in how or "JIT" in how else "-"
    print(f"kernel first call: {seconds:.2f} s ({how}); threads: numba {numba_threads}, "
          f"torch {torch.get_num_threads()}; CPUs {os.cpu_count()} (shared machine: timings are noisy)")
    head = (f"{'M':>5}{'N':>6}{'K':>6} {'BLAS ms':>8}{'torch ms':>9}{'packed ms':>10}{'x BLAS':>8}{'x torch':>8}"
            f"{'exact':>6}{'float KB':>9}{'packed KB':>10}{'pack ms':>8}")
    print(head + ("  NumPy-XNOR ms" if args.numpy_path else ""))
    for M, N, K in SHAPES:
        r = time_binary_gemm(M, N, K, repeats=args.repeats, numpy_path=args.numpy_path)
        line = (f"{M:>5}{N:>6}{K:>6} {r['numpy_blas_s'] * 1e3:>8.2f}{r['torch_s'] * 1e3:>9.2f}"
                f"{r['packed_s'] * 1e3:>10.3f}{r['numpy_blas_s'] / r['packed_s']:>8.1f}"
                f"{r['torch_s'] / r['packed_s']:>8.1f}"
                f"{str(r['exact']):>6}{r['bytes_float'] / 1024:>9.0f}{r['bytes_packed'] / 1024:>10.0f}"
                f"{r['pack_s'] * 1e3:>8.1f}")
        if args.numpy_path:
            line += f"{r['numpy_xnor_s'] * 1e3:>14.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
