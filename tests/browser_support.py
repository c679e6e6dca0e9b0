"""Helpers for the real-browser test: a throw-away JupyterLab server and a notebook driver for Chromium.

Only Debian's ``/usr/bin/chromium`` is used (``.ci/install_browser.sh``); playwright never downloads a
browser here. The server runs on a *copy* of the notebooks (autosave would otherwise write outputs back
into the repository) with temporary config, data, runtime, workspace and IPython dirs, so neither the
user's settings nor a stale workspace can change what the test sees.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

SERVER_READY_TIMEOUT_S = 60.0
KERNEL_READY_TIMEOUT_S = 60.0
RUN_ALL_TIMEOUT_S = 240.0  # lab 04 precomputes its 48-setting grid: > 120 s on a loaded 2-core machine
WIDGETS_TIMEOUT_S = 20.0
REDRAW_TIMEOUT_S = 5.0
IDLE_SETTLE_S = 8.0  # after a render or a drag the kernel must be idle within this ...
IDLE_WINDOW_S = 5.0  # ... and then stay idle (no busy status, no comm message) this long


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_chromium() -> Path:
    """Return the chromium path; skip when it is missing (fail instead when ``CI=true``)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        msg = "playwright is not installed: .venv/bin/pip install -e '.[test]'"
        if _in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    msg = f"{CHROMIUM} is missing: run .ci/install_browser.sh (as root) or apt-get install chromium"
    if _in_ci():
        pytest.fail(msg + " (CI=true: the browser test must not be skipped)", pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LAB_CONFIG = """\
c = get_config()  # noqa: F821
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.expose_app_in_browser = True
c.ServerApp.open_browser = False
c.KernelSpecManager.ensure_native_kernel = True
c.MultiKernelManager.default_kernel_name = "python3"
"""

# User settings (temporary dir): no news/update toast in screenshots, no autosave mid-test.
_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    # JupyterLab 4's default ("contentVisibility") skips rendering off-screen cells: a widget further
    # down than the last executed cell was never rendered, so no slider was found. Render every cell.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


@dataclass
class LabServer:
    """A JupyterLab process serving ``root`` on 127.0.0.1 with a random token."""

    root: Path
    scratch: Path
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    startup_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, rel_path: str) -> str:
        """A fresh workspace per notebook, so no restored tab can hide the one we want."""
        workspace = "t" + uuid.uuid4().hex[:12]
        return f"{self.base_url}/lab/workspaces/{workspace}/tree/{rel_path}?reset&token={self.token}"

    def _env(self) -> dict:
        env = dict(os.environ)
        dirs = {}
        for name in ("config", "data", "runtime", "ipython", "workspaces", "settings"):
            d = self.scratch / name
            d.mkdir(parents=True, exist_ok=True)
            dirs[name] = d
        (dirs["config"] / "jupyter_lab_config.py").write_text(_LAB_CONFIG)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            # A user-level kernelspec in ~/.local/share/jupyter could otherwise shadow the venv's python3.
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        self._dirs = dirs
        return env

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.workspaces_dir={self._dirs['workspaces']}",
            f"--LabApp.user_settings_dir={self._dirs['settings']}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--KernelSpecManager.ensure_native_kernel=True",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def start(self, attempts: int = 3) -> None:
        """Start and wait (bounded) until the REST API answers; retry on a lost port race."""
        env = self._env()
        user = self._dirs["settings"]
        for plugin, values in _SETTINGS.items():
            pkg, name = plugin.split(":")
            target = user / pkg / f"{name}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        last_error = ""
        for attempt in range(attempts):
            self.port = free_port()
            self.log_path = self.scratch / f"jupyterlab-{attempt}.log"
            t0 = time.perf_counter()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self._command(),
                    cwd=self.root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # own process group: stop() kills kernels too
                )
            ok, last_error = self._wait_ready()
            if ok:
                self.startup_s = time.perf_counter() - t0
                return
            self.stop()
        raise RuntimeError(f"JupyterLab did not start after {attempts} attempts: {last_error}")

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        url = f"{self.base_url}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return True, ""
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        return False, f"no answer within {SERVER_READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"

    def api(self, path: str):
        sep = "&" if "?" in path else "?"
        with urllib.request.urlopen(f"{self.base_url}{path}{sep}token={self.token}", timeout=10) as r:
            return json.loads(r.read())

    def shutdown_kernels(self) -> None:
        """Delete every session and kernel, so each notebook's kernel stops when its test ends."""
        for path in ("/api/sessions", "/api/kernels"):
            try:
                items = self.api(path)
            except (urllib.error.URLError, OSError):
                return
            for item in items:
                url = f"{self.base_url}{path}/{item['id']}?token={self.token}"
                try:
                    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()
                except (urllib.error.URLError, OSError):
                    pass

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """Kill the whole process group (server + kernels): SIGTERM, then SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = None
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if pgid is not None:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
            elif proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=wait_s)
                if pgid is None:
                    break
                # the leader is gone; make sure no kernel of the group survives
                os.killpg(pgid, 0)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))


# --------------------------------------------------------------------------------------------------
# Notebook driver (JavaScript evaluated in the page through window.jupyterapp)

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

_JS_CANVAS_DATA = """
(k) => { const c = window.__qlCanvas(k); return c ? c.toDataURL() : null; }
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
    total_s: float = 0.0

    def __str__(self) -> str:
        return (
            f"open {self.open_s:.1f}s, kernel {self.kernel_s:.1f}s, run-all {self.run_all_s:.1f}s, "
            f"widgets {self.widgets_s:.1f}s, drag-to-redraw {self.redraw_s * 1000:.0f}ms "
            f"(drag {self.drag_s * 1000:.0f}ms, {self.n_draws} repaints, "
            f"settled {self.settle_s * 1000:.0f}ms after release), "
            f"total {self.total_s:.1f}s"
        )


# ipywidgets / ipympl front-end failures that leave a widget half-rendered (e.g. a 0x0 ipympl canvas
# after "Error setting state: ... drawImage ... 'broken' state").
_WIDGET_JS_ERROR = re.compile(
    r"Error setting state|Could not create (a )?view|Error displaying widget|"
    r"Failed to (create|render) (the )?(view|widget)"
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


class NotebookDriver:
    """Open one notebook in a page, run it, check its widgets and drag its first slider."""

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
