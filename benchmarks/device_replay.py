"""Replay issue 14's CUDA failures on the simulated second device (tests/simdevice.py), without a GPU.

    .venv/bin/python benchmarks/device_replay.py                      # today's library: all ok but one clear error
    git worktree add /tmp/old 7750bec^                                # the library when issue 14 was filed
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/device_replay.py  # the same calls fail as they did on CUDA

Each call runs with the model and inputs on cpu:1 (labels on the device, or on the CPU where named); prints ok or
FAIL with the first line of the error. "evaluate(model dev, data cpu)" is meant to fail: today with a ValueError
naming both devices, then with torch's raw error.
"""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch
from simdevice import simulated_device

from quantlab import calibration, ptq
from quantlab.engine import run_int
from quantlab.models import SmallCNN, evaluate, fold_batchnorm
from quantlab.observers import HistogramObserver


def main() -> None:
    torch.manual_seed(0)
    cpu = SmallCNN().eval()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    acts = ptq.calibrate_activations(cpu, x)
    ok = 0
    with simulated_device() as dev:
        m = copy.deepcopy(cpu).to(dev)
        xd, yd = x.to(dev), y.to(dev)
        calls = {
            "fold_batchnorm": lambda: fold_batchnorm(m)(xd),
            "quantize_weights(8)+evaluate": lambda: evaluate(ptq.quantize_weights(m, 8), xd, yd),
            "quantize_weights(8)+evaluate(cpu labels)": lambda: evaluate(ptq.quantize_weights(m, 8), xd, y),
            "quantize_weights(4)+evaluate": lambda: evaluate(ptq.quantize_weights(m, 4), xd, yd),
            **{f"calibrate_activations[{k}]": (lambda k=k: ptq.calibrate_activations(m, xd, k))
               for k in ["minmax", "percentile", "mse", "kl", "symmetric_kl", "js"]},
            "convert+run_int": lambda: run_int(ptq.convert(m, acts), xd),
            "run_int(device input)": lambda: run_int(ptq.convert(cpu, acts), xd),
            "evaluate(model dev, data cpu)": lambda: evaluate(m, x, y),
            "calibration.histogram": lambda: calibration.histogram(xd),
            "calibration.calibrate": lambda: calibration.calibrate(xd),
            "HistogramObserver.update": lambda: HistogramObserver(256).update(xd),
        }
        for name, call in calls.items():
            try:
                call()
            except Exception as e:  # noqa: BLE001 - the replay reports every error
                print("FAIL ", name, "|", type(e).__name__, str(e).splitlines()[0][:110])
            else:
                ok += 1
                print("ok   ", name)
    print(f"{ok} ok, {len(calls) - ok} failed")


if __name__ == "__main__":
    main()
