"""Headless Chromium: render report.html as a browser does (its DOM after the script ran, a screenshot).

Used by the tests and by docs/report_screenshot.py; nothing in training or prediction needs it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome executable on PATH, or None."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(url: str, *options: str, timeout: float = 60) -> str:
    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError(f"no Chromium found on PATH (tried {', '.join(NAMES)})")
    # A profile of its own: several runs at once (pytest-xdist, other users) do not collide.
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            executable,
            "--headless",
            "--no-sandbox",  # root in containers and CI has no user namespaces for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *options,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def rendered_dom(page: Path, fragment: str = "") -> str:
    """The DOM of ``page`` (a file) after its scripts ran, opened at ``#fragment`` if given."""
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _run(url, "--dump-dom")


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``page`` as Chromium draws it."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        Path(page).resolve().as_uri(),
        f"--screenshot={out}",
        f"--window-size={width},{height}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",  # lazy images of the first screen are loaded by then
    )
    return out
