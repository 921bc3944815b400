"""A real JupyterLab in headless Chromium, for the widget smoke tests.

Debian's ``/usr/bin/chromium`` is driven by the Python ``playwright`` package
(no browser download), the launch flags are those of
``shared/tools/look-at-notebooks``.  JupyterLab runs on a free loopback port
with a token, in a temporary root holding the notebooks under test, with
``PYTHONPATH`` at the repository root so its kernel imports this s2pt.

Without chromium, playwright or jupyterlab the tests skip and say why, except
when ``CI=true``: then a missing piece is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _missing(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {why}")
    pytest.skip(why)


def chromium_path() -> str:
    for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and os.path.exists(p):
            return p
    _missing("no chromium (apt-get install -y chromium)")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Lab(str):
    """The server's base URL; ``.url(path)`` adds the token, ``.root`` is
    the folder it serves."""
    token = ""
    root: Path

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self}/{path.lstrip('/')}{sep}token={self.token}"


@pytest.fixture(scope="session")
def shots():
    """Where screenshots of failures go (printed, never deleted)."""
    return Path(tempfile.mkdtemp(prefix="s2pt-browser-"))


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("no jupyterlab (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), "s2pt-browser-test"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--ServerApp.open_browser=False",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    log = open(root / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = Lab(f"http://127.0.0.1:{port}")
    base.token, base.root = token, root
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base.url("api/status"), timeout=1)
                break
            except Exception:
                if server.poll() is not None:
                    break
                time.sleep(0.25)
        else:
            pytest.fail(f"JupyterLab did not start: see {root / 'server.log'}")
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited: {(root / 'server.log').read_text()[-2000:]}")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="session")
def browser():
    exe = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no playwright (pip install playwright; it uses Debian's chromium, "
                 "no `playwright install`)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()
