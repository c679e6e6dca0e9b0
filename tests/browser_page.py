"""Real-browser test, part 2: driving one notebook in JupyterLab (JavaScript through window.jupyterapp).

:class:`NotebookDriver` opens a notebook, waits for its kernel, runs all cells, fails on any error output
or widget that never renders, and drags the first slider of every explorer (an output area with an
ipympl canvas and a slider). Kernel-idle checks, screenshots and failure reports: ``browser_monitor.py``.
"""

from __future__ import annotations

import re
import time

from browser_monitor import (
    _JS_CANVAS_DATA,
    _JS_DRAW_TIMES,
    _JS_WATCH_ACTIVITY,
    _JS_WATCH_DRAWS,
    _JS_WATCH_IOPUB,
    PageMonitor,
    _poll,
)

KERNEL_READY_TIMEOUT_S = 60.0
RUN_ALL_TIMEOUT_S = 240.0  # lab 04 precomputes its 48-setting grid: > 120 s on a loaded 2-core machine
WIDGETS_TIMEOUT_S = 20.0
REDRAW_TIMEOUT_S = 5.0

_JS_CURRENT_NOTEBOOK = """
(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  const w = app.shell.currentWidget;
  return !!(w && w.context && w.context.path === path && w.content && w.sessionContext);
}
"""

_JS_KERNEL_READY = """
async () => {
  const w = window.jupyterapp.shell.currentWidget;
  await w.context.ready;
  await w.sessionContext.ready;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel) return {ok: false, why: 'no kernel (kernel picker dialog?)'};
  await kernel.info;
  const t0 = Date.now();
  while (kernel.status !== 'idle' && Date.now() - t0 < 30000) {
    await new Promise(r => setTimeout(r, 100));
  }
  return {ok: kernel.status === 'idle', status: kernel.status, name: kernel.name};
}
"""

_JS_KERNEL_IDLE = """
() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'
"""

# Ask the kernel itself which python it is (the notebook is not modified; no execution count is used).
_JS_KERNEL_PREFIX = """
async () => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute(
    {code: 'import sys; print(sys.prefix)', silent: false, store_history: false});
  let out = '';
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
  };
  await future.done;
  return out.trim();
}
"""

_JS_CELL_STATE = """
() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.widgets;
  const res = {n_code: 0, pending: [], errors: []};
  cells.forEach((cell, i) => {
    const m = cell.model;
    if (m.type !== 'code') return;
    res.n_code += 1;
    const src = m.sharedModel.getSource().split('\\n')[0].slice(0, 80);
    if (m.executionCount === null || m.executionCount === undefined) res.pending.push({i, src});
    const outs = m.outputs;
    for (let k = 0; k < outs.length; k++) {
      const o = outs.get(k).toJSON();
      if (o.output_type === 'error') {
        res.errors.push({i, src, text: o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n')});
      } else if (o.output_type === 'stream' && o.name === 'stderr' &&
                 /Traceback|Error:|Exception/.test(o.text)) {
        res.errors.push({i, src, text: o.text});
      }
    }
  });
  return res;
}
"""

_JS_DOM_ERRORS = """
() => {
  const bad = [];
  document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').forEach(el => {
    if (/Traceback/.test(el.textContent)) bad.push('stderr: ' + el.textContent.slice(0, 2000));
  });
  document.querySelectorAll('.jp-OutputArea-output .jp-RenderedText').forEach(el => {
    const t = el.textContent;
    if (/Traceback \\(most recent call last\\)/.test(t) || /^\\s*\\w+Error\\b.*\\n/.test(t) &&
        el.closest('[data-mime-type="application/vnd.jupyter.stderr"]'))
      bad.push('text: ' + t.slice(0, 2000));
  });
  document.querySelectorAll('.jp-OutputArea-output').forEach(el => {
    if (/Error displaying widget/.test(el.textContent)) bad.push('widget: ' + el.textContent.slice(0, 200));
  });
  return bad;
}
"""

_JS_LOADING_WIDGETS = """
() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
        .filter(el => el.textContent.trim() === 'Loading widget...').length
"""

# An *explorer* is an output area holding an ipympl canvas and at least one slider (quantlab's Explorer.ui,
# or any hand-built VBox of widgets + figure). ipympl 0.10: .jupyter-matplotlib-canvas-div holds the figure
# canvas and, on top, the rubber-band canvas; the figure is the first one.
_JS_EXPLORERS = """
() => {
  window.__qlExplorerEls = () => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
    .filter(o => o.querySelector('.jupyter-matplotlib-canvas-div canvas') && o.querySelector('.widget-slider'));
  window.__qlCanvas = (k) => window.__qlExplorerEls()[k].querySelector('.jupyter-matplotlib-canvas-div canvas');
  return window.__qlExplorerEls().length;
}
"""

_JS_CANVAS_SIZES = """
() => Array.from(document.querySelectorAll('.jupyter-matplotlib-canvas-div'))
        .map(d => d.querySelector('canvas')).map(c => [c ? c.width : 0, c ? c.height : 0])
"""

_JS_SCROLL_TO_CANVAS = """
(i) => {
  const d = document.querySelectorAll('.jupyter-matplotlib-canvas-div')[i];
  const cell = d && d.closest('.jp-Cell');
  if (cell) cell.scrollIntoView({block: 'start'});
  return !!cell;
}
"""

_JS_CANVAS_PAINTED = """
(k) => {
  const c = window.__qlCanvas(k);
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < d.length; i += 4 * 97) if (d[i] !== 0) return true;
  return false;
}
"""

# ipywidgets / ipympl front-end failures that leave a widget half-rendered (e.g. a 0x0 ipympl canvas
# after "Error setting state: ... drawImage ... 'broken' state").
_WIDGET_JS_ERROR = re.compile(
    r"Error setting state|Could not create (a )?view|Error displaying widget|"
    r"Failed to (create|render) (the )?(view|widget)"
)


class NotebookDriver(PageMonitor):
    """Open one notebook in a page, run it, check its widgets and drag its first slider."""

    # -- steps ------------------------------------------------------------------------------------
    def open(self) -> None:
        t0 = time.perf_counter()
        self.page.goto(self.server.notebook_url(self.rel_path), wait_until="domcontentloaded")
        self.page.wait_for_function(_JS_CURRENT_NOTEBOOK, arg=self.rel_path, timeout=60_000)
        self.t.open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = self.page.evaluate(_JS_KERNEL_READY)
        if not state.get("ok"):
            self.fail(f"kernel not ready: {state}")
        self.kernel_name = state.get("name")
        self.kernel_prefix = self.page.evaluate(_JS_KERNEL_PREFIX)
        self.page.evaluate(_JS_WATCH_IOPUB)
        self.page.evaluate(_JS_WATCH_ACTIVITY)
        self.t.kernel_s = time.perf_counter() - t0

    def run_all(self) -> None:
        t0 = time.perf_counter()
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
        while True:
            state = self.page.evaluate(_JS_CELL_STATE)
            if state["errors"]:
                e = state["errors"][0]
                self.fail(f"cell {e['i']} ({e['src']!r}) raised:\n{e['text'][:3000]}")
            if not state["pending"] and state["n_code"]:
                break
            if time.monotonic() > deadline:
                p = state["pending"][0]
                self.fail(
                    f"run-all not finished after {RUN_ALL_TIMEOUT_S:.0f} s: code cell {p['i']} "
                    f"({p['src']!r}) has no execution count ({len(state['pending'])} pending)"
                )
            time.sleep(0.2)
        self.n_code = state["n_code"]
        self.t.run_all_s = time.perf_counter() - t0

    def check_outputs(self) -> None:
        t0 = time.perf_counter()
        loading = _poll(lambda: self.page.evaluate(_JS_LOADING_WIDGETS) == 0, WIDGETS_TIMEOUT_S)
        bad = self.page.evaluate(_JS_DOM_ERRORS)
        if bad:
            self.fail("error output in the page:\n" + "\n---\n".join(bad))
        widget_js_errors = [m for m in self.console if _WIDGET_JS_ERROR.search(m)]
        if widget_js_errors:
            sizes = self.page.evaluate(_JS_CANVAS_SIZES)
            empty = [i for i, (w, h) in enumerate(sizes) if not (w and h)]
            if empty:  # show the broken figure in the failure screenshot
                self.page.evaluate(_JS_SCROLL_TO_CANVAS, empty[0])
            self.fail(
                "widget front-end errors in the browser console:\n"
                + "\n".join(widget_js_errors[:10])
                + f"\nipympl canvas sizes (w, h) in page order: {sizes}; 0x0 (never shown): {empty}"
            )
        if not loading:
            self.fail(f"'Loading widget...' still shown after {WIDGETS_TIMEOUT_S:.0f} s")
        n_canvas = _poll(lambda: self.page.locator(".jupyter-matplotlib-canvas-div canvas").count(), 10)
        if not n_canvas:
            self.fail("no ipympl canvas (.jupyter-matplotlib-canvas-div canvas) rendered")
        if not self.page.locator(".widget-slider .noUi-target").count():
            self.fail("no ipywidgets slider (.widget-slider .noUi-target) rendered")
        self.t.widgets_s = time.perf_counter() - t0

    def explorers(self) -> int:
        """How many explorers (output areas with an ipympl canvas and a slider) the page shows."""
        return self.page.evaluate(_JS_EXPLORERS)

    def exercise_explorer(self, k: int) -> dict:
        """Screenshot explorer k, drag its first slider, require readout + canvas to change and the kernel
        to go idle again; screenshot after the drag."""
        page = self.page
        box = page.locator(f'[data-ql-explorer="{k}"]')
        slider = box.locator(".widget-slider").first
        target = slider.locator(".noUi-target").first
        handle = target.locator(".noUi-handle").first
        readout = slider.locator(".widget-readout").first
        box.scroll_into_view_if_needed()
        if not _poll(lambda: page.evaluate(_JS_CANVAS_PAINTED, k), 10):
            self.fail(f"explorer {k}: ipympl canvas never painted")
        before_img = self._stable_canvas(k)
        before_value = readout.inner_text().strip()
        self.screenshot(f".explorer{k}", box)

        tbox, hbox = target.bounding_box(), handle.bounding_box()
        if not tbox or not hbox or tbox["width"] < 20:
            self.fail(f"explorer {k}: slider track not visible: track={tbox} handle={hbox}")
        x0 = hbox["x"] + hbox["width"] / 2
        y0 = hbox["y"] + hbox["height"] / 2
        # to the far end of the track: a SelectionSlider with 2-3 options snaps back on a short drag
        x1 = tbox["x"] + tbox["width"] - 1 if x0 <= tbox["x"] + tbox["width"] / 2 else tbox["x"] + 1
        page.evaluate("() => { window.__qlKernelErrors = []; }")
        page.evaluate(_JS_WATCH_DRAWS, k)
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y0, steps=12)
        page.mouse.up()
        t_up = time.perf_counter()
        changed = _poll(lambda: page.evaluate(_JS_CANVAS_DATA, k) != before_img, REDRAW_TIMEOUT_S, 0.02)
        t_changed = time.perf_counter() - t_up
        _poll(lambda: readout.inner_text().strip() != before_value, 2)
        after_value = readout.inner_text().strip()
        times = page.evaluate(_JS_DRAW_TIMES)
        errors = page.evaluate("() => window.__qlKernelErrors")
        if errors:
            self.fail(f"explorer {k}: the kernel reported an error during the drag (widget callback?):\n"
                      + "\n---\n".join(e[:3000] for e in errors))
        if after_value == before_value:
            self.fail(f"explorer {k}: slider readout did not change on drag ({before_value!r}, moved {x1 - x0:+.0f}px)")
        if not changed:
            self.fail(f"explorer {k}: ipympl canvas did not redraw within {REDRAW_TIMEOUT_S:.0f} s of the drag "
                      f"(readout {before_value!r} -> {after_value!r})")
        self.check_idle(f"dragging explorer {k}'s first slider")
        self._stable_canvas(k)
        self.screenshot(f".explorer{k}.after_drag", box)
        if k == 0:
            self.t.n_draws = times["n_draws"]
            self.t.drag_s = (times["drag_ms"] or 0) / 1000
            self.t.settle_s = (times["last_after_up_ms"] or 0) / 1000
            self.t.redraw_s = times["first_ms"] / 1000 if times["first_ms"] is not None else t_changed
        return {"before": before_value, "after": after_value}

    def exercise_explorers(self, expected: int) -> list[dict]:
        """Every explorer of the page: idle after render, then drag each one (see exercise_explorer)."""
        n = self.explorers()
        if n < max(expected, 1):
            self.fail(f"{n} explorer(s) rendered (canvas + slider in one output); the notebook builds {expected}")
        self.page.evaluate("() => window.__qlExplorerEls().forEach((el, k) => el.setAttribute('data-ql-explorer', k))")
        self.check_idle("Run All (every explorer rendered)")
        return [self.exercise_explorer(k) for k in range(n)]
