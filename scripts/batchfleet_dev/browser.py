"""Headless Debian chromium driven through selenium and Debian's chromedriver (never a downloaded
browser or driver): shared by the web console's browser tests and ``scripts/screenshots``."""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = ["chromium"]


def _find(name: str, fallback: str) -> str:
    found = shutil.which(name) or fallback
    if not Path(found).exists():
        raise RuntimeError(
            f"{name} is missing: the browser tests need Debian's chromium and chromium-driver; run scripts/browser as root "
            "(apt-get install -y chromium chromium-driver)"
        )
    return found


def chromium(width: int = 1440, height: int = 1000) -> webdriver.Chrome:
    """A new headless chromium window of this size."""
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "/usr/bin/chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(_find("chromedriver", "/usr/bin/chromedriver")))
