"""KL threshold search: quantlab's vectorised search vs ONNX Runtime's entropy calibrator, same histogram.

    .venv/bin/python benchmarks/calibration_speed.py [--data auto|cnn|synthetic] [--repeats 21]

Data: the trained CNN's bn2 output (the signed input of relu2) on 256 calibration images when
data/cnn.pt exists (``--data auto``), else a synthetic activation: a Gaussian mixture with a few outliers.

ONNX Runtime (``onnxruntime.quantization.calibrate.HistogramCollector``, method "entropy") builds a
histogram of x on ``num_bins`` equal bins over [-max|x|, max|x|] and loops over candidate thresholds in
Python (``get_entropy_threshold``). Our :func:`quantlab.calibration.kl_threshold` wants a histogram of |x|;
folding ORT's histogram around its zero bin gives exactly that (num_bins/2 bins over [0, max|x|]), so both
searches see the very same counts. Two configurations:

- "same 2048-bin |x| histogram": ORT num_bins=4096 (2048 per side), num_quantized_bins=256 (128 per side)
  vs ours on the folded 2048 bins with 8-bit signed (n_levels = 128). Our 20 ms target is for this case.
- "ORT default-like": ORT num_bins=2048, num_quantized_bins=128 vs ours on the folded 1024 bins, 7-bit
  n_levels = 64 (same ratio of bins to levels as ORT's).

The two searches differ in details (ORT smooths P and Q with eps = 1e-4, builds the expansion mask from P,
and slices 2i+1 bins around the zero bin), so the thresholds are close, not identical.
onnxruntime is *not* a quantlab dependency: ``.venv/bin/pip install onnxruntime onnx`` for this script only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantlab.calibration import kl_threshold  # noqa: E402


def activations(kind: str) -> tuple[np.ndarray, str]:
    cnn = Path(__file__).resolve().parent.parent / "data" / "cnn.pt"
    if kind == "cnn" or (kind == "auto" and cnn.is_file()):
        import torch

        from quantlab.data import calibration_batch
        from quantlab.models import load_trained

        model = load_trained()
        out = {}
        model.bn2.register_forward_hook(lambda m, i, o: out.__setitem__("x", o.detach()))
        with torch.no_grad():
            model(calibration_batch(256))
        x = out["x"].reshape(-1).numpy().astype(np.float32)
        return x, f"CNN bn2 output (input of relu2), 256 calibration images, {x.size:,} values"
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, 600_000), rng.normal(2.5, 0.6, 200_000),
                        rng.normal(-1.0, 0.3, 100_000), [18.0, -14.0, 25.0]]).astype(np.float32)
    return x, f"synthetic Gaussian mixture with 3 outliers, {x.size:,} values"


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
    ap.add_argument("--repeats", type=int, default=21, help="repeats of our search (ORT: a third, >= 3)")
    args = ap.parse_args(argv)
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except ImportError as e:
        print(f"onnxruntime is not installed ({e}).\nInstall it for this benchmark only: "
              ".venv/bin/pip install onnxruntime onnx   (it is not a quantlab dependency)")
        return

    x, label = activations(args.data)
    print(f"data: {label}; max|x| = {np.abs(x).max():.4f}")
    head = ("configuration", "ours (ms)", "ORT (ms)", "ratio", "T ours", "T ORT")
    print("{:32s} {:>10s} {:>10s} {:>8s} {:>9s} {:>9s}".format(*head))
    for num_bins, n_q, bits in ((4096, 256, 8), (2048, 128, 7)):
        coll = HistogramCollector("entropy", symmetric=True, num_bins=num_bins, num_quantized_bins=n_q,
                                  percentile=99.999, scenario="same")
        with contextlib.redirect_stdout(io.StringIO()):
            coll.collect({"x": x})
        hist_tuple = coll.histogram_dict["x"]
        hist, edges = np.asarray(hist_tuple[0], np.float64), np.asarray(hist_tuple[1], np.float64)
        zero = hist.size // 2  # ORT's zero bin index: fold [-M, 0) onto [0, M)
        h_abs = hist[zero:] + hist[:zero][::-1]
        e_abs = edges[zero:]

        t_ours, res = median_time(lambda h=h_abs, e=e_abs, b=bits: kl_threshold(h, e, bits=b), args.repeats)
        with contextlib.redirect_stdout(io.StringIO()):
            t_ort, ort = median_time(lambda c=coll, ht=hist_tuple, q=n_q: c.get_entropy_threshold(ht, q),
                                     max(3, args.repeats // 7))
        name = f"{num_bins // 2} |x| bins, n_levels {2 ** (bits - 1)}"
        print(f"{name:32s} {t_ours * 1e3:10.2f} {t_ort * 1e3:10.1f} {t_ort / t_ours:7.0f}x "
              f"{res.threshold:9.4f} {float(ort[1]):9.4f}")
    print("target: ours <= 20 ms for the 2048-bin search (median of repeats).")


if __name__ == "__main__":
    main()
