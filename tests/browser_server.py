"""Real-browser test, part 1: Chromium and a throw-away JupyterLab server.

Only Debian's ``/usr/bin/chromium`` is used (``.ci/install_browser.sh``); playwright never downloads a
browser here. The server runs on a *copy* of the notebooks (autosave would otherwise write outputs back
into the repository) with temporary config, data, runtime, workspace and IPython dirs, so neither the
user's settings nor a stale workspace can change what the test sees. Part 2, driving a notebook in the
page: ``browser_page.py``; part 3, kernel-idle / comm monitoring and screenshots: ``browser_monitor.py``.
"""

from __future__ import annotations

import json
import os
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
