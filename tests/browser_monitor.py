"""Real-browser test, part 3: watching the kernel and the page, screenshots and failure reports.

The kernel's iopub stream is recorded in the page (every traceback, also of widget callbacks; every
status and comm message with its page time), so :meth:`PageMonitor.check_idle` can require that the
kernel goes idle and *stays* idle (an explorer that redraws forever keeps sending busy/comm messages).
The paints of an ipympl canvas are timed on the page clock (drag-to-redraw). Every failure comes with a
screenshot and the browser console's errors.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_server import LabServer

IDLE_SETTLE_S = 8.0  # after a render or a drag the kernel must be idle within this ...
IDLE_WINDOW_S = 5.0  # ... and then stay idle (no busy status, no comm message) this long

# Record every traceback the kernel sends (also those of widget callbacks, which no cell displays).
_JS_WATCH_IOPUB = """
() => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  window.__qlKernelErrors = [];
  kernel.iopubMessage.connect((_, msg) => {
    const t = msg.header.msg_type, c = msg.content;
    if (t === 'error') {
      window.__qlKernelErrors.push(c.ename + ': ' + c.evalue + '\\n' + (c.traceback || []).join('\\n'));
    } else if (t === 'stream' && c.name === 'stderr' && /Traceback/.test(c.text)) {
      window.__qlKernelErrors.push(c.text);
    }
  });
  return true;
}
"""

# Kernel activity: every iopub message (status busy/idle, comm_msg, stream, display) with its page time.
# A kernel that keeps redrawing shows a stream of busy/idle pairs and comm_msg images with nobody typing.
_JS_WATCH_ACTIVITY = """
() => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  window.__qlActivity = [];
  kernel.iopubMessage.connect((_, msg) => {
    const t = msg.header.msg_type, c = msg.content || {};
    window.__qlActivity.push({t: performance.now(), type: t,
      state: t === 'status' ? c.execution_state : null,
      what: t === 'comm_msg' && c.data ? (c.data.method || '') + ' ' + JSON.stringify(c.data.content || {}).slice(0, 60)
                                       : null});
  });
  return true;
}
"""

_JS_ACTIVITY = """
(since) => {
  const now = performance.now();
  const msgs = (window.__qlActivity || []).filter(m => m.t >= now - since * 1000);
  const last = (window.__qlActivity || []).slice(-1)[0];
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  return {status: kernel.status, quiet_s: last ? (now - last.t) / 1000 : 1e9,
          busy: msgs.filter(m => m.state === 'busy').length,
          comm: msgs.filter(m => m.type === 'comm_msg').length,
          sample: msgs.filter(m => m.what).slice(0, 4).map(m => m.what)};
}
"""

_JS_CANVAS_DATA = """
(k) => { const c = window.__qlCanvas(k); return c ? c.toDataURL() : null; }
"""

# Timestamps (page clock) of the drag and of every paint of the watched canvas: ipympl paints a view
# with drawImage(offscreen_canvas) on the visible canvas' 2d context.
_JS_WATCH_DRAWS = """
(k) => {
  const c = window.__qlCanvas(k);
  const ctx = c.getContext('2d');
  window.__qlDraws = [];
  if (!ctx.__qlWrapped) {
    const orig = ctx.drawImage.bind(ctx);
    ctx.drawImage = (...a) => { window.__qlDraws.push(performance.now()); return orig(...a); };
    ctx.__qlWrapped = true;
  }
  window.__qlPointer = {};
  document.addEventListener('pointerdown', () => { window.__qlPointer.down = performance.now(); },
                            {capture: true, once: true});
  document.addEventListener('pointerup', () => { window.__qlPointer.up = performance.now(); },
                            {capture: true, once: true});
  return true;
}
"""

_JS_DRAW_TIMES = """
() => {
  const p = window.__qlPointer || {}, d = window.__qlDraws || [];
  const after = d.filter(t => p.down !== undefined && t >= p.down);
  return {
    first_ms: after.length ? after[0] - p.down : null,
    last_after_up_ms: (after.length && p.up !== undefined)
      ? Math.max(0, after[after.length - 1] - p.up) : null,
    drag_ms: (p.up !== undefined && p.down !== undefined) ? p.up - p.down : null,
    n_draws: after.length,
  };
}
"""


@dataclass
class Timings:
    open_s: float = 0.0
    kernel_s: float = 0.0
    run_all_s: float = 0.0
    widgets_s: float = 0.0
    redraw_s: float = 0.0  # pointer down -> first repaint of the figure (page clock)
    settle_s: float = 0.0  # pointer up -> last repaint of the figure
    drag_s: float = 0.0  # pointer down -> pointer up (the scripted drag itself)
    n_draws: int = 0
    total_s: float = 0.0  # everything, including the harness's deliberate idle windows and screenshots

    @property
    def learner_s(self) -> float:
        """What a learner waits for: open, kernel start, run all, widgets render, one drag to redraw."""
        return self.open_s + self.kernel_s + self.run_all_s + self.widgets_s + self.redraw_s

    def __str__(self) -> str:
        return (
            f"open {self.open_s:.1f}s, kernel {self.kernel_s:.1f}s, run-all {self.run_all_s:.1f}s, "
            f"widgets {self.widgets_s:.1f}s, drag-to-redraw {self.redraw_s * 1000:.0f}ms "
            f"(drag {self.drag_s * 1000:.0f}ms, {self.n_draws} repaints, "
            f"settled {self.settle_s * 1000:.0f}ms after release), "
            f"learner {self.learner_s:.1f}s, total with the idle checks {self.total_s:.1f}s"
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _poll(fn, timeout_s: float, interval_s: float = 0.1):
    """Call ``fn`` until it returns a truthy value or time runs out; return the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


class PageMonitor:
    """Console capture, kernel-idle checks, canvas stability, screenshots and failures for one page.

    The base of ``browser_page.NotebookDriver``; ``rel_path`` names the notebook in failure messages.
    """

    def __init__(self, page, server: LabServer, rel_path: str, shots: Path, name: str):
        self.page = page
        self.server = server
        self.rel_path = rel_path
        self.shots = shots
        self.name = name
        self.t = Timings()
        self._t0 = time.perf_counter()
        self.console: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _on_console(self, msg) -> None:
        if msg.type == "error":
            self.console.append(f"console.error: {msg.text}")

    def check_idle(self, what: str) -> dict:
        """The kernel goes idle within IDLE_SETTLE_S and then stays idle for IDLE_WINDOW_S: no busy status,
        no comm message (an explorer that keeps redrawing sends both, ~10 a second in the lab 04 bug)."""
        page = self.page

        def settled():
            a = page.evaluate(_JS_ACTIVITY, 0)
            return a if a["status"] == "idle" and a["quiet_s"] >= 1.0 else None

        if not _poll(settled, IDLE_SETTLE_S, 0.2):
            a = page.evaluate(_JS_ACTIVITY, IDLE_SETTLE_S)
            self.fail(f"kernel not idle {IDLE_SETTLE_S:.0f} s after {what}: status {a['status']}, "
                      f"{a['busy']} busy / {a['comm']} comm messages in that time, e.g. {a['sample']} "
                      "(an explorer that redraws forever?)")
        time.sleep(IDLE_WINDOW_S)
        a = page.evaluate(_JS_ACTIVITY, IDLE_WINDOW_S)
        if a["busy"] or a["comm"] or a["status"] != "idle":
            self.fail(f"kernel did not stay idle for {IDLE_WINDOW_S:.0f} s after {what}: {a['busy']} busy, "
                      f"{a['comm']} comm messages, e.g. {a['sample']} (an explorer that redraws forever?)")
        return a

    def _stable_canvas(self, k: int, timeout_s: float = 5.0) -> str:
        prev = self.page.evaluate(_JS_CANVAS_DATA, k)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.3)
            cur = self.page.evaluate(_JS_CANVAS_DATA, k)
            if cur == prev:
                return cur
            prev = cur
        return prev

    # -- reporting --------------------------------------------------------------------------------
    def screenshot(self, suffix: str, element=None) -> Path:
        """A PNG under ``shots`` (artifacts/browser/): the whole page, or just ``element`` (a locator)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{self.name}{suffix}.png"
        try:
            (element or self.page).screenshot(path=str(path))
        except Exception as exc:  # a screenshot must never hide the real failure
            print(f"screenshot {path} failed: {exc}")
        return path

    def fail(self, msg: str) -> None:
        msg = _ANSI.sub("", msg)
        shot = self.screenshot(".failed")
        extra = "\n".join(self.console[-10:])
        pytest.fail(
            f"{self.rel_path}: {msg}\nscreenshot: {shot}" + (f"\nbrowser console errors:\n{extra}" if extra else ""),
            pytrace=False,
        )

    def finish(self) -> Timings:
        self.t.total_s = time.perf_counter() - self._t0
        return self.t
