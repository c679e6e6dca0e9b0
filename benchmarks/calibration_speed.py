"""KL threshold search: quantlab's vectorised search vs NVIDIA's per-candidate loop, same 2048-bin histogram.

    .venv/bin/python benchmarks/calibration_speed.py [--data auto|cnn|synthetic] [--repeats 11]

Data: the trained CNN's bn2 output (the signed input of relu2) on 256 calibration images when
data/cnn.pt exists (``--data auto``), else a synthetic activation: a Gaussian mixture with a few outliers.

The reference is NVIDIA's TensorRT entropy calibration, modelopt ``HistogramCalibrator`` method "entropy"
(``_compute_amax_entropy`` in modelopt/torch/quantization/calib/histogram.py; the same code as
pytorch-quantization). nvidia-modelopt is not installed here (it pulls pulp, omegaconf, pydantic,
nvidia-ml-py, ...), so the reference column is a literal copy of that function's loop over candidates
(``bins[0] = bins[1]``, ``np.linspace`` chunks, ``np.digitize``, a ``Counter``, scipy.stats.entropy written
out with NumPy). Both run on the same 2048-bin histogram of |x|, signed (128 levels) and unsigned
(256 levels); the thresholds must be equal (quantlab's default merge rule is that procedure).
Times are medians; on a shared machine they are noisy, the ratio in one run is what counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantlab.calibration import flatten_zero_bin, histogram, kl_threshold  # noqa: E402


def activations(kind: str) -> tuple[np.ndarray, str]:
    cnn = Path(__file__).resolve().parent.parent / "data" / "cnn.pt"
    if kind == "cnn" or (kind == "auto" and cnn.is_file()):
        import torch

        from quantlab.data import calibration_batch
        from quantlab.models import collect_activations, load_trained

        x = collect_activations(load_trained(), calibration_batch(256), torch.nn.BatchNorm2d)["bn2"]
        x = x.reshape(-1).numpy().astype(np.float32)
        return x, f"CNN bn2 output (input of relu2), 256 calibration images, {x.size:,} values"
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, 600_000), rng.normal(2.5, 0.6, 200_000),
                        rng.normal(-1.0, 0.3, 100_000), [18.0, -14.0, 25.0]]).astype(np.float32)
    return x, f"synthetic Gaussian mixture with 3 outliers, {x.size:,} values"


def _entropy(pk: np.ndarray, qk: np.ndarray) -> float:
    """scipy.stats.entropy(pk, qk): sum of rel_entr after normalising (inf where pk > 0 = qk)."""
    pk, qk = pk / pk.sum(), qk / qk.sum()
    pos = pk > 0
    if (qk[pos] <= 0).any():
        return float("inf")
    return float(np.sum(pk[pos] * np.log(pk[pos] / qk[pos])))


def nvidia_amax(calib_hist, calib_bin_edges, num_bits, unsigned, stride=1, start_bin=128) -> float:
    """modelopt's _compute_amax_entropy, as written there (one Python loop per candidate)."""
    bins = np.array(calib_hist, dtype=np.float64)
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, len(bins) + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(_entropy(reference_density, new_density))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(calib_bin_edges[last_argmin * stride + start_bin])


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("auto", "cnn", "synthetic"), default="auto")
    ap.add_argument("--repeats", type=int, default=11, help="repeats of our search (the reference: 1)")
    args = ap.parse_args(argv)
    x, label = activations(args.data)
    h, e = histogram(x, 2048, absolute=True)
    print(f"data: {label}; max|x| = {np.abs(x).max():.4f}; 2048-bin histogram of |x|")
    print("reference: literal loop of modelopt's _compute_amax_entropy (nvidia-modelopt not installed)")
    head = ("grid", "ours (ms)", "NVIDIA (ms)", "ratio", "T ours", "T NVIDIA")
    print("{:28s} {:>10s} {:>12s} {:>8s} {:>9s} {:>9s}".format(*head))
    for unsigned in (False, True):
        t_ours, res = median_time(lambda u=unsigned: kl_threshold(flatten_zero_bin(h, e), e, 8, signed=not u),
                                  args.repeats)
        t_ref, amax = median_time(lambda u=unsigned: nvidia_amax(h, e, 8, u), 1)
        name = f"8-bit {'unsigned, 256' if unsigned else 'signed, 128'} levels"
        print(f"{name:28s} {t_ours * 1e3:10.1f} {t_ref * 1e3:12.0f} {t_ref / t_ours:7.0f}x "
              f"{res.threshold:9.4f} {amax:9.4f}")
    print("target: ratio >= 100x, equal thresholds.")


if __name__ == "__main__":
    main()
