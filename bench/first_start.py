"""First start as a user meets it: `python -m bench.first_start`.

A fresh data, runs and cache folder, `streamlit run streamlit_app.py`, and Debian's Chromium
opening Home; then a second session. Prints the seconds to a healthy server, to the first
Home page fully run (which renders the synthetic set), and to a second session's Home, and
any request that left the machine.
"""

import importlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the real-browser tests' server and browser helpers
bs = importlib.import_module("browser_support")

work = Path(tempfile.mkdtemp(prefix="speedsign-first-start-"))
t0 = time.perf_counter()
with bs.streamlit_server(runs=work / "runs", data=work / "data", cache=work / "cache", log=work / "log.txt",
                         one_thread=False) as url:
    t1 = time.perf_counter()
    with bs.sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=str(bs.CHROMIUM), args=bs.CHROMIUM_ARGS)
        page = browser.new_page(viewport=bs.VIEWPORT)
        external = []
        page.on("request", lambda r: None if r.url.startswith((url, "data:")) else external.append(r.url))
        t2 = time.perf_counter()
        bs.open_page(page, url, timeout_ms=120_000)
        t3 = time.perf_counter()
        page.screenshot(path=str(work / "home.png"))
        second = browser.new_page(viewport=bs.VIEWPORT)
        t4 = time.perf_counter()
        bs.open_page(second, url, timeout_ms=120_000)
        t5 = time.perf_counter()
        browser.close()
print(f"server healthy {t1 - t0:.1f} s; first Home ready {t3 - t2:.1f} s after opening (total {t3 - t0:.1f} s); "
      f"a second session's Home {t5 - t4:.1f} s; requests off this machine: {external[:5] or 'none'}; {work}")
