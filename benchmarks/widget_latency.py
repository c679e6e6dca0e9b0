"""Widget latency: drive every lab explorer headlessly and time each update, side by side in one run.

    .venv/bin/python benchmarks/widget_latency.py [--repeats 3]

Runs under ipympl's backend (as in the labs). For each explorer it sets a sequence of widget values, as a
learner dragging a slider would, and times the Python side of one update: the observer callback
(recompute, move artists, blit or full redraw) plus the PNG that ipympl would send to the browser
(``canvas.get_diff_image()``). Prints median and p95 in ms per explorer, and how many updates needed a
full redraw (axis limits changed) instead of a blit, the median CPU time of this process (wall time
on a busy machine includes waiting for a core), and whether the explorer is idle after a draw (a full draw
asks for no further draw). Target: median <= 50 ms, idle yes. Every lab's explorer is registered: labs 01/02
below, later labs through ``BENCHMARK_CASES`` in their ``quantlab/viz/<concept>.py``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import matplotlib

matplotlib.use("module://ipympl.backend_nbagg")

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
    for mod in ("quantlab.viz.nonlinear", "quantlab.viz.ptq", "quantlab.viz.calibration",
                "quantlab.viz.correction", "quantlab.viz.qat", "quantlab.viz.binary", "quantlab.viz.transformer"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        out.extend((label, mod, factory, values) for label, factory, values in getattr(m, "BENCHMARK_CASES", []))
    return out


def time_explorer(module: str, factory: str, values: dict, repeats: int):
    ns = vars(importlib.import_module(module))
    ex = eval(factory, ns)  # noqa: S307 - our own fixed expressions
    canvas = ex.fig.canvas
    # Emulate the browser: under ipympl, draw_idle() asks the front end, which answers "draw" and the
    # kernel then renders the whole figure. Here we do that render at once and count it in the update.
    pending = {"draw": True}
    real_draw_idle = canvas.draw_idle

    def draw_idle(*args, **kwargs):
        pending["draw"] = True
        real_draw_idle(*args, **kwargs)

    canvas.draw_idle = draw_idle
    if hasattr(canvas, "syncing_data_url"):
        canvas.syncing_data_url = False  # what ipympl does on the front end's "initialized" message
    canvas.draw()  # the browser's first paint after display
    canvas.get_diff_image()
    pending["draw"] = False
    times, cpu, full0 = [], [], getattr(ex, "n_full_draws", 0)
    for _ in range(repeats):
        for name, seq in values.items():
            for v in seq:
                w = ex.controls[name]
                if w.value == v:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                w.value = v
                if pending["draw"]:
                    canvas.draw()
                    pending["draw"] = False
                canvas.get_diff_image()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    # Idle after render: one more full draw must not ask for yet another (the lab 04 redraw loop, issue 15).
    pending["draw"] = False
    canvas.draw()
    idle = not pending["draw"] and not ex.fig.stale
    return times, cpu, getattr(ex, "n_full_draws", len(times)) - full0, idle


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"{'lab / explorer':<22}{'updates':>8}{'full draws':>11}{'median ms':>11}{'p95 ms':>9}"
          f"{'CPU median ms':>15}{'idle':>6}")
    worst = 0.0
    for label, module, factory, values in CASES + extra_cases():
        ts, cpu, full, idle = time_explorer(module, factory, values, args.repeats)
        ts.sort()
        med = statistics.median(ts) * 1e3
        p95 = ts[min(len(ts) - 1, int(0.95 * len(ts)))] * 1e3
        worst = max(worst, med)
        print(f"{label:<22}{len(ts):>8}{full:>11}{med:>11.1f}{p95:>9.1f}{statistics.median(cpu) * 1e3:>15.1f}"
              f"{'yes' if idle else 'NO':>6}")
    print(f"worst median: {worst:.1f} ms (target <= 50 ms; wall time — CPU time shows the cost without other load)")


if __name__ == "__main__":
    main()
