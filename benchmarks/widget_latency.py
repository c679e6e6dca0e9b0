"""Widget latency: drive every lab explorer headlessly and time each update, side by side in one run.

    .venv/bin/python benchmarks/widget_latency.py [--repeats 3]

For each explorer, sets a sequence of widget values (as a learner dragging a slider would) and times
the Python side of one update: the observer callback (recompute + move artists) plus a full synchronous
Agg render of the figure (``fig.canvas.draw()``), which is what ipympl does before sending the image.
Prints median and p95 in milliseconds per explorer. Target: median <= 50 ms.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import matplotlib

matplotlib.use("Agg")

# (label, module, factory expression evaluated in that module's namespace, {control: [values...]})
CASES = [
    ("01 linear", "quantlab.viz.linear", "LinearExplorer()",
     {"bits": [8, 6, 4, 3, 2, 1, 5, 16], "mode": ["symmetric", "asymmetric"], "clip": [0.8, 0.5, 0.3, 1.0],
      "data": ["outlier", "post-relu", "gaussian"]}),
    ("02 granularity", "quantlab.viz.granularity",
     "GranularityExplorer(__import__('quantlab.models').models.load_trained().conv2.weight)",
     {"bits": [8, 6, 4, 3, 2], "factor": [2.0, 5.0, 10.0, 30.0, 1.0], "channel": [1, 5, 9, 0]}),
]


def extra_cases():
    """Explorers of later labs register themselves through a ``BENCHMARK_CASES`` list in their module."""
    out = []
    for mod in ("quantlab.viz.ptq", "quantlab.viz.calibration", "quantlab.viz.nonlinear",
                "quantlab.viz.correction", "quantlab.viz.qat", "quantlab.viz.binary"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        out.extend((label, mod, factory, values) for label, factory, values in getattr(m, "BENCHMARK_CASES", []))
    return out


def time_explorer(module: str, factory: str, values: dict, repeats: int) -> list[float]:
    ns = vars(importlib.import_module(module))
    ex = eval(factory, ns)  # noqa: S307 - our own fixed expressions
    ex.fig.canvas.draw()
    times = []
    for _ in range(repeats):
        for name, seq in values.items():
            for v in seq:
                w = ex.controls[name]
                if w.value == v:
                    continue
                t0 = time.perf_counter()
                w.value = v
                ex.fig.canvas.draw()
                times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{'explorer':<22}{'updates':>8}{'median ms':>11}{'p95 ms':>9}")
    worst = 0.0
    for label, module, factory, values in CASES + extra_cases():
        ts = sorted(time_explorer(module, factory, values, args.repeats))
        med = statistics.median(ts) * 1e3
        p95 = ts[min(len(ts) - 1, int(0.95 * len(ts)))] * 1e3
        worst = max(worst, med)
        print(f"{label:<22}{len(ts):>8}{med:>11.1f}{p95:>9.1f}")
    print(f"worst median: {worst:.1f} ms (target <= 50 ms)")


if __name__ == "__main__":
    main()
