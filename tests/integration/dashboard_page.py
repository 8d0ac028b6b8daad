"""The dashboard in Debian's Chromium (Playwright, sync API) for the end-to-end tests of the CLI and the server.

``launch_chromium()`` starts one headless browser; :class:`DashboardPage` is one tab on ``mpupload serve``'s
dashboard: sign in, find an upload's row (``tr[data-upload-id]``), and the history of every percent text each
row has shown (recorded in the page by a MutationObserver, so a value that was on screen for one frame only
still counts), and its status texts likewise, plus the console errors the page logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

#: deadline of each DOM condition
TIMEOUT_MS = 15_000

#: runs before the page's own scripts: window.__seen[uploadId] = {percent: [...], status: [...]}, every distinct
#: text of the row's .percent and .status cells, in the order shown
_RECORD_CELLS = """
(() => {
  window.__seen = {};
  const note = (list, text) => { if (text && list[list.length - 1] !== text) list.push(text); };
  const scan = () => {
    for (const tr of document.querySelectorAll("tr[data-upload-id]")) {
      const seen = (window.__seen[tr.dataset.uploadId] ||= { percent: [], status: [] });
      for (const name of ["percent", "status"]) {
        const cell = tr.querySelector("." + name);
        if (cell) note(seen[name], cell.textContent);
      }
    }
  };
  const start = () => new MutationObserver(scan).observe(document.documentElement,
    { subtree: true, childList: true, characterData: true });
  if (document.documentElement) start(); else document.addEventListener("DOMContentLoaded", start);
})();
"""


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class DashboardPage:
    """One browser context and tab on the dashboard at ``base_url``."""

    context: BrowserContext
    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, base_url: str) -> DashboardPage:
        context = browser.new_context(viewport={"width": 1440, "height": 600})
        context.add_init_script(_RECORD_CELLS)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        board = cls(context, page, base_url)
        page.on("console", lambda m: board.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: board.errors.append(f"pageerror: {e}"))
        page.goto(base_url)
        return board

    def close(self) -> None:
        self.context.close()

    def sign_in(self, username: str, password: str) -> None:
        self.page.fill("#username", username)
        self.page.fill("#password", password)
        self.page.click("#signin-button")
        expect(self.page.locator("#user")).to_have_text(username)
        expect(self.page.locator("#conn")).to_have_text("live")  # the subscription is up

    def row(self, upload_id: str) -> Locator:
        return self.page.locator(f'tr[data-upload-id="{upload_id}"]')

    def seen(self, upload_id: str, cell: str) -> list[str]:
        """Every distinct text the row's ``cell`` ("percent" or "status") has shown, in order."""
        return list(self.page.evaluate("([id, cell]) => (window.__seen[id] || {})[cell] || []", [upload_id, cell]))

    def percents(self, upload_id: str) -> list[float]:
        """Every percent the row has shown, in order ("—" left out)."""
        return [float(m.group(1)) for t in self.seen(upload_id, "percent") if (m := re.fullmatch(r"([\d.]+) %", t))]

    def wait_for_intermediate_percent(self, upload_id: str, timeout_ms: float = TIMEOUT_MS) -> None:
        """Until the row has shown a percent strictly between 0 and 100."""
        self.page.wait_for_function(
            """id => ((window.__seen[id] || {}).percent || []).some(t => {
                 const v = parseFloat(t); return v > 0 && v < 100; })""",
            arg=upload_id, timeout=timeout_ms)
