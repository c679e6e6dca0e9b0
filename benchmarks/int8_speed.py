"""FP32 vs int8 on the CPU, side by side in one run: does full quantization make inference faster?

    .venv/bin/python benchmarks/int8_speed.py [--repeats 15] [--batch 256] [--threads N]

Rows (median wall-clock time of ``--repeats`` runs after warm-up, batch 256, torch.inference_mode):

* CNN (the lab's SmallCNN) and a wider MLP 1024-2048-2048-10, each in FP32 and through PyTorch's own
  int8 CPU kernels (eager ``torch.ao.quantization``: fuse -> prepare -> calibrate -> convert, x86/fbgemm
  backend; quint8 activations, per-channel qint8 weights). Expected: int8 >= 2x faster on the MLP.
* Weight-only PTQ (``quantlab.ptq.quantize_weights``): weights dequantized to FP32 at every call, then
  the FP32 model runs -- expected ~1x (a little slower: the dequantization is extra work).
* quantlab's integer engine (``quantlab.engine.run_int``): integer-only but written in plain torch ops
  for reading, not speed -- expected *much slower* than FP32. It is a teaching engine.

Why eager ``torch.ao.quantization`` (see README): it ships inside torch 2.13 and its int8 kernels run
without a compiler; it prints a deprecation notice pointing to torchao, which we silence here.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantlab.engine import run_int  # noqa: E402
from quantlab.ptq import calibrate_activations, convert, median_time, quantize_weights  # noqa: E402


def _eager_int8(float_model: nn.Module, fuse: list, calib: torch.Tensor) -> nn.Module:
    """PyTorch's eager PTQ: QuantStub -> fused int8 modules -> DeQuantStub (x86 backend)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import (
            DeQuantStub,
            QuantStub,
            convert,
            fuse_modules,
            get_default_qconfig,
            prepare,
        )

        engines = torch.backends.quantized.supported_engines
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
        m = copy.deepcopy(float_model).eval()
        if fuse:
            m = fuse_modules(m, fuse)
        wrapped = nn.Sequential(QuantStub(), m, DeQuantStub()).eval()
        wrapped.qconfig = get_default_qconfig(torch.backends.quantized.engine)
        prepared = prepare(wrapped)
        with torch.inference_mode():
            prepared(calib)
        return convert(prepared)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                         nn.Linear(2048, 10)).eval()


def main(argv=None) -> list[tuple[str, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    def row(name, fp32_fn, other_fn, x):
        t_fp = median_time(fp32_fn, x, repeats=args.repeats, warmup=2)
        t_q = median_time(other_fn, x, repeats=args.repeats, warmup=2)
        rows.append((name, t_fp, t_q))
        print(f"{name:<38} {t_fp * 1e3:9.2f} {t_q * 1e3:11.2f} {t_fp / t_q:8.2f}x", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'model / path':<38} {'FP32 ms':>9} {'other ms':>11} {'speedup':>9}")

    # The wide MLP: big matrix products, where int8 pays off.
    mlp, x_mlp = _mlp(), torch.randn(args.batch, 1024)
    mlp_q = _eager_int8(mlp, [["0", "1"], ["2", "3"]], x_mlp)
    row("MLP 1024-2048-2048-10  int8 (torch.ao)", mlp, mlp_q, x_mlp)
    row("MLP  weight-only W8 (quantlab)", mlp, quantize_weights(mlp, 8), x_mlp)

    # The lab's CNN (random weights if the checkpoint is missing: speed does not depend on them).
    from quantlab.models import SmallCNN, load_trained

    try:
        cnn = load_trained()
    except FileNotFoundError:
        print("(data/cnn.pt missing: timing an untrained SmallCNN)")
        cnn = SmallCNN().eval()
    try:
        from quantlab.data import calibration_batch

        x_cnn = calibration_batch(args.batch)
    except FileNotFoundError:
        x_cnn = torch.rand(args.batch, 1, 28, 28)
    cnn_q = _eager_int8(cnn, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]], x_cnn)
    row("SmallCNN  int8 (torch.ao)", cnn, cnn_q, x_cnn)
    row("SmallCNN  weight-only W8 (quantlab)", cnn, quantize_weights(cnn, 8), x_cnn)
    qmodel = convert(cnn, calibrate_activations(cnn, x_cnn))
    reps = args.repeats
    args.repeats = max(3, reps // 3)  # the teaching engine is slow; fewer repeats
    row("SmallCNN  integer engine (quantlab)", cnn, lambda x: run_int(qmodel, x), x_cnn)
    args.repeats = reps
    return rows


if __name__ == "__main__":
    main()
