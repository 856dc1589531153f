"""Load on a live server: `python -m bench.load [--sessions 20] [--models DIR] [--json FILE]`.

`streamlit run streamlit_app.py` on 127.0.0.1 (the published models of --models, an empty runs
folder, a data root holding the training data), one real training job running in a subprocess
(it shows on the server as training), then N real browser sessions (headless Chromium contexts
through Playwright's async API) that open Classify together, upload the same photo at the same
moment, and wait until every model's answer is shown.

Measured per session: the time from the upload to every model's answer card on the page (each
card ends with the "Trained on" line, written after its model answered), and to the end of the
page's run (the last saliency map drawn). A lone session classifies first (a cold server: it
loads the models), so the concurrent sessions measure load, not loading. Reported: p50/p95/max,
how many sessions got every model's answer, whether every session got the same answers, the
server log's ERROR/Traceback/exception lines (there must be none), the training job's state,
and the CPU (speedsign.machine.describe_machine).

The browsers run on the same machine as the server: on 2 cores they take most of the CPU (the
report says how much the server itself used). --tabs makes the sessions tabs of one browser
context (each tab is still a Streamlit session of its own), which about halves the browsers' CPU.

Everything is bounded: the server's start, the job's start, each session, and the whole run
(--timeout); the server and the job are killed afterwards. tests/test_load_server.py runs
`run_load` with tiny published models and a tiny training job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "gtsrb-speed32"  # as bench.workspace (not imported: torch)
sys.path.insert(0, str(ROOT / "tests"))  # the real-browser tests' server and browser helpers
bs = importlib.import_module("browser_support")

# A line of the server's log that means something went wrong (Streamlit logs a script's
# uncaught exception as "Uncaught app exception" plus a traceback).
LOG_PROBLEM = re.compile(r"traceback|\berror\b|exception", re.IGNORECASE)
POLL_MS = 100  # how often a page checks for its answers ("raf" polling costs 20 pages real CPU)

# The answer cards, as tests/test_browser.py finds them: the innermost column around each
# "Trained on" caption. Returns one entry per card: the run id caption and the predicted label.
CARDS_JS = """() => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
  .filter(c => c.innerText.includes('Trained on'))
  .map(c => {
    const card = c.closest('[data-testid="stColumn"]') || c.parentElement;
    const metric = card.querySelector('[data-testid="stMetricValue"]');
    const guess = [...card.querySelectorAll('p')].find(p => p.innerText.startsWith('Best guess: '));
    const captions = [...card.querySelectorAll('[data-testid="stCaptionContainer"]')].map(x => x.innerText);
    return {run: captions[0] || '', label: metric ? metric.innerText.trim()
            : (guess ? guess.innerText.replace(/^Best guess: /, '').replace(/ \\(\\d+%\\)$/, '').trim() : '')};
  })"""
COUNT_JS = """n => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
  .filter(c => c.innerText.includes('Trained on')).length >= n"""
PROBLEMS_JS = """() => [...document.querySelectorAll('[data-testid="stException"], '
  + '[data-testid="stAlertContentError"]')].map(e => e.innerText)"""
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
CONNECTED = '[data-testid="stApp"][data-test-connection-state="CONNECTED"]'
NO_SPINNER = "() => !document.querySelector('[data-testid=\"stSpinner\"], [data-testid=\"stSkeleton\"]')"


# ---------------------------------------------------------------- the photo, the data, the job

def default_image(work: Path) -> Path:
    """A real 50 km/h photo of gtsrb-speed32 when ../shared is here; else a rendered sign."""
    folder = SHARED_DATA / "train" / "speed_50"
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".ppm"})
        if files:
            return files[len(files) // 2]
    import numpy as np

    from speedsign.synth import render_track

    path = work / "sign-speed_50.png"
    render_track("speed_50", rng=np.random.default_rng(0), size=96, n_frames=1)[0].save(path)
    return path


def default_data(work: Path) -> Path:
    """The training job's data: gtsrb-speed32 when ../shared is here; else rendered signs."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    from speedsign.synth import render_dataset

    out = work / "synth"
    render_dataset(out, per_class=100, seed=0, size=32)
    return out


def data_root_with(work: Path, dataset: Path) -> Path:
    """A data root holding `dataset` as a link (the server lists it; no first-start rendering)."""
    root = work / "data"
    root.mkdir(parents=True, exist_ok=True)
    link = root / dataset.name
    if not link.exists():
        link.symlink_to(Path(dataset).resolve(), target_is_directory=True)
    return link


def server_env(*, runs: Path, data_root: Path, cache: Path, models: Path, one_thread: bool) -> dict[str, str]:
    """The environment streamlit_server gives the app: a job launched with it sees the same folders."""
    env = {**os.environ, "SPEEDSIGN_RUNS": str(runs), "SPEEDSIGN_DATA": str(data_root),
           "SPEEDSIGN_CACHE": str(cache), "SPEEDSIGN_MODELS": str(models), "PYTHONUNBUFFERED": "1"}
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def train_command(*, data: Path, runs: Path, budget: str | None = "10m",
                  extra: Sequence[str] = ("--preset", "fast")) -> list[str]:
    """`python -m speedsign train --approach scratch ...` (the `fast` preset by default)."""
    command = [sys.executable, "-m", "speedsign", "train", "--approach", "scratch", "--data", str(data),
               "--runs-dir", str(runs), "--json", *extra]
    return command + (["--budget", budget] if budget else [])


def start_job(command: Sequence[str], *, env: dict[str, str], log: Path,
              preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    """The training job in its own process group (killed with its children after)."""
    with open(log, "wb") as out:
        return subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)


def stop_job(process: subprocess.Popen | None) -> None:
    """SIGTERM to the job's process group (a job stops cleanly: cancelled), SIGKILL if it lingers."""
    bs.stop_process(process, grace_s=20)


def job_state(runs: Path) -> dict[str, Any] | None:
    """The newest run of the runs folder as the server sees it (state, epoch), or None."""
    from speedsign.runs import list_runs

    found = list_runs(runs)
    if not found:
        return None
    info = found[0]
    return {"run_id": info.run_id, "state": info.state, "epoch": info.epoch, "epochs": info.epochs,
            "best_val_acc": info.best_val_acc, "error": info.error}


def wait_training(runs: Path, job: subprocess.Popen, *, timeout_s: float, log: Path) -> dict[str, Any]:
    """Until the job's run is `running` (it imports torch and checks the data first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(runs)
        if state and state["state"] == "running":
            return state
        if job.poll() is not None:
            raise RuntimeError(f"the training job exited with {job.returncode} before training:\n{bs._tail(log)}")
        time.sleep(0.5)
    raise RuntimeError(f"the training job was not running after {timeout_s:.0f} s:\n{bs._tail(log)}")


def log_problems(log: Path) -> list[str]:
    """The server log's lines that mention an error, a traceback or an exception."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return [f"(no log at {log})"]
    return [line for line in lines if LOG_PROBLEM.search(line)]


def machine_busy_s() -> float:
    """CPU seconds this machine has been busy (all cores, every process; /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def server_pid(url: str) -> int | None:
    """The pid of the `streamlit run` serving `url` (found by its --server.port)."""
    port = url.rsplit(":", 1)[1].encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"streamlit" in b" ".join(argv) and port in argv:
                    return int(entry.name)
    return None


def expected_models(models: Path, runs: Path) -> list[str]:
    """The run ids Classify offers: finished runs, then published models (as ui.list_models)."""
    from speedsign.bundles import list_bundles
    from speedsign.run_views import is_usable
    from speedsign.runs import list_runs

    return [info.run_id for info in [*list_runs(runs), *list_bundles(models)] if is_usable(info)]


# ---------------------------------------------------------------- sessions (Playwright async)

@dataclass
class Session:
    index: int
    opened_s: float | None = None  # goto to the page's first complete run
    answers_s: float | None = None  # upload to every model's answer card
    done_s: float | None = None  # upload to the page's run ended (saliency maps included)
    cards: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    def complete(self, expected: int, *, exact: bool = True) -> bool:
        """Every model answered (exactly `expected` cards; at least, when a job may finish meanwhile),
        each with a label, and no error on the page."""
        count = len(self.cards) == expected if exact else len(self.cards) >= expected
        return self.error is None and not self.problems and count and all(card["label"] for card in self.cards)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Gate:
    """Opens when every session has its page ready or has failed before that: a barrier that a
    failed session cannot break for the others."""

    def __init__(self, parties: int) -> None:
        self.pending, self.event = parties, asyncio.Event()

    def _count_down(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self.event.set()

    async def arrive(self) -> None:
        self._count_down()
        await self.event.wait()

    def give_up(self) -> None:
        self._count_down()


async def wait_idle(page: Any, *, timeout_ms: float) -> None:
    """browser_support.wait_idle, async: connected, no script run going (twice), no spinner."""
    await page.wait_for_selector(CONNECTED, timeout=timeout_ms)
    for _ in range(2):
        await page.wait_for_timeout(150)
        await page.wait_for_selector(IDLE, timeout=timeout_ms)
    await page.wait_for_function(NO_SPINNER, timeout=timeout_ms, polling=POLL_MS)


async def open_page(page: Any, url: str, *, timeout_ms: float) -> None:
    await page.goto(url, timeout=timeout_ms)
    await page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout_ms)
    await wait_idle(page, timeout_ms=timeout_ms)


async def classify(page: Any, session: Session, *, image: Path, expected: int, timeout_ms: float) -> None:
    """Upload the photo on an open Classify page; time every answer, then the end of the run."""
    uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    started = time.perf_counter()
    await uploader.set_input_files(str(image))
    await page.wait_for_function(COUNT_JS, arg=expected, timeout=timeout_ms, polling=POLL_MS)
    session.answers_s = time.perf_counter() - started
    await wait_idle(page, timeout_ms=timeout_ms)
    session.done_s = time.perf_counter() - started
    # the card's first caption is the run id, maybe followed by " · what it is"
    session.cards = [{**card, "run": card["run"].split(" · ")[0].strip()} for card in await page.evaluate(CARDS_JS)]
    session.problems = await page.evaluate(PROBLEMS_JS)


async def one_session(browser: Any, url: str, session: Session, *, image: Path, expected: int,
                      opened: Gate | None, timeout_ms: float, home: bool = False, shared: Any = None) -> Session:
    """One Streamlit session: [Home,] Classify, upload, answers. In a fresh browser context, or
    in a new tab of the `shared` context (a tab is a session of its own: its own websocket)."""
    arrived = False
    context = shared or await browser.new_context(viewport=bs.VIEWPORT)
    context.set_default_timeout(timeout_ms)
    page = None
    try:
        page = await context.new_page()
        started = time.perf_counter()
        if home:
            await open_page(page, url, timeout_ms=timeout_ms)
            session.problems += await page.evaluate(PROBLEMS_JS)
        await open_page(page, f"{url}/classify", timeout_ms=timeout_ms)
        session.opened_s = time.perf_counter() - started
        await page.locator('[data-testid="stFileUploader"] input[type="file"]').wait_for(state="attached")
        if opened is not None:
            arrived = True
            await opened.arrive()  # every session uploads at the same moment
        await classify(page, session, image=image, expected=expected, timeout_ms=timeout_ms)
    except Exception as error:  # recorded: the other sessions go on
        session.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        if opened is not None and not arrived:
            opened.give_up()  # a session that failed before its upload keeps nobody waiting
        with contextlib.suppress(Exception):
            await (page.close() if shared is not None and page is not None else context.close())
    return session


async def run_sessions(url: str, *, sessions: int, image: Path, expected: int, timeout_s: float,
                       session_timeout_s: float, lone_first: bool = True, home: bool = False,
                       tabs: bool = False) -> dict[str, Any]:
    """A lone session first (it loads the models), then `sessions` at once; all within timeout_s.
    tabs: the sessions are tabs of one browser context (they share its cache: about half the
    browser's CPU on 2 cores), not a context each."""
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + timeout_s
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(bs.CHROMIUM), headless=True,
                                                   args=bs.CHROMIUM_ARGS)
        try:
            timeout_ms = session_timeout_s * 1000
            shared = await browser.new_context(viewport=bs.VIEWPORT) if tabs else None
            lone = None
            if lone_first:
                lone = await asyncio.wait_for(one_session(browser, url, Session(-1), image=image, expected=expected,
                                                          opened=None, timeout_ms=timeout_ms, home=home,
                                                          shared=shared),
                                              timeout=max(1.0, deadline - time.monotonic()))
            gate = Gate(sessions)
            started = time.perf_counter()
            tasks = [asyncio.ensure_future(one_session(browser, url, Session(i), image=image, expected=expected,
                                                       opened=gate, timeout_ms=timeout_ms, home=home,
                                                       shared=shared))
                     for i in range(sessions)]
            done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=30)
            results = []
            for i, task in enumerate(tasks):
                if task in done and task.exception() is None:
                    results.append(task.result())
                else:
                    results.append(Session(i, error=f"not finished within the overall timeout ({timeout_s:.0f} s)"))
            wall = time.perf_counter() - started
        finally:
            with contextlib.suppress(Exception):
                await browser.close()
    return {"lone": lone, "sessions": results, "wall_s": wall}


# ---------------------------------------------------------------- the whole measurement

def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None}
    array = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), 3),
            "p95": round(float(np.percentile(array, 95)), 3), "max": round(float(array.max()), 3),
            "min": round(float(array.min()), 3)}


@contextlib.contextmanager
def workspace(work: Path | None) -> Iterator[Path]:
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
        yield Path(work)
        return
    folder = Path(tempfile.mkdtemp(prefix="speedsign-load-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_load(*, models: Path, sessions: int = 20, image: Path | None = None, data: Path | None = None,
             train: bool = True, train_budget: str | None = "10m", train_extra: Sequence[str] = ("--preset", "fast"),
             timeout_s: float = 600.0, session_timeout_s: float = 300.0, one_thread: bool = False,
             lone_first: bool = True, tabs: bool = False, work: Path | None = None, keep_log: Path | None = None,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """The measurement; returns the report (see the module's docstring). Raises RuntimeError when
    the server or the job cannot start, or when the models folder holds no usable model."""
    from speedsign.machine import describe_machine

    models = Path(models).resolve()
    began = time.perf_counter()
    with workspace(work) as folder:
        runs, cache, log = folder / "runs", folder / "cache", folder / "streamlit.log"
        runs.mkdir(exist_ok=True)
        expected = expected_models(models, runs)
        if not expected:
            raise RuntimeError(f"no usable published model in {models}: publish some with "
                               "`python -m speedsign publish RUN_DIR --out DIR --name NAME`")
        photo = Path(image) if image else default_image(folder)
        dataset = data_root_with(folder, Path(data) if data else default_data(folder))
        env = server_env(runs=runs, data_root=dataset.parent, cache=cache, models=models, one_thread=one_thread)
        job = None
        job_report: dict[str, Any] | None = None
        say(f"server on 127.0.0.1 with {len(expected)} models of {models}; photo {photo}")
        try:
            with bs.streamlit_server(runs=runs, data=dataset.parent, cache=cache, log=log, models=models,
                                     one_thread=one_thread, start_s=120) as url:
                if train:
                    command = train_command(data=dataset, runs=runs, budget=train_budget, extra=train_extra)
                    job = start_job(command, env=env, log=folder / "train.log")
                    job_report = {"command": " ".join(command[1:]),
                                  "at_start": wait_training(runs, job, timeout_s=180, log=folder / "train.log")}
                    say(f"training: {job_report['at_start']['run_id']} is running")
                say(f"{sessions} sessions...")
                pid = server_pid(url)
                cpu_before = (machine_busy_s(), process_cpu_s(pid), time.perf_counter())
                outcome = asyncio.run(asyncio.wait_for(  # the last resort: the sessions bound themselves
                    run_sessions(url, sessions=sessions, image=photo, expected=len(expected),
                                 timeout_s=timeout_s, session_timeout_s=min(session_timeout_s, timeout_s),
                                 lone_first=lone_first, tabs=tabs),
                    timeout=timeout_s + 60))
                cpu = {"cores": os.cpu_count(), "wall_s": round(time.perf_counter() - cpu_before[2], 2),
                       "machine_busy_s": round(machine_busy_s() - cpu_before[0], 1),
                       "server_s": round(process_cpu_s(pid) - cpu_before[1], 1)}
                if job is not None:
                    job_report["at_end"] = job_state(runs)
                    job_report["still_running_at_end"] = job.poll() is None
        finally:
            stop_job(job)
            if keep_log is not None and log.is_file():
                shutil.copyfile(log, keep_log)
        problems = log_problems(log)
        if job is not None:
            job_report["exit_code"] = job.returncode
            job_report["final"] = job_state(runs)
        results: list[Session] = outcome["sessions"]
        lone: Session | None = outcome["lone"]
        complete = [s for s in results if s.complete(len(expected))]
        answers = {tuple((c["run"], c["label"]) for c in s.cards) for s in complete + ([lone] if lone else [])}
        report = {
            "machine": describe_machine(), "sessions": sessions, "models": expected, "photo": str(photo),
            "server_threads": "1 (OMP_NUM_THREADS=1)" if one_thread else "torch default",
            "browser": "tabs of one context" if tabs else "a context per session", "cpu": cpu,
            "lone": lone.to_json() if lone else None,
            "time_to_answer_s": percentiles([s.answers_s for s in results if s.answers_s is not None]),
            "time_to_done_s": percentiles([s.done_s for s in results if s.done_s is not None]),
            "page_open_s": percentiles([s.opened_s for s in results if s.opened_s is not None]),
            "complete": len(complete), "same_answers": len(answers) <= 1,
            "answers": [{"run": run, "label": label} for run, label in (sorted(answers)[0] if answers else ())],
            "failures": [s.to_json() for s in results if not s.complete(len(expected))],
            "server_log_problems": problems, "training": job_report,
            "sessions_wall_s": round(outcome["wall_s"], 2), "wall_s": round(time.perf_counter() - began, 2),
            "per_session": [s.to_json() for s in results],
        }
    return report


def print_report(report: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(f"machine: {report['machine']}")
    lone = report.get("lone") or {}
    say(f"models: {', '.join(report['models'])}; server torch threads: {report['server_threads']}")
    if lone:
        say(f"lone session (cold models): answers {lone.get('answers_s')} s, done {lone.get('done_s')} s")
    say(f"{'':28}{'p50':>8}{'p95':>8}{'max':>8}{'n':>5}")
    for key, name in (("page_open_s", "Classify opened (s)"), ("time_to_answer_s", "upload -> all answers (s)"),
                      ("time_to_done_s", "upload -> page done (s)")):
        row = report[key]
        cells = "".join(f"{'-' if row[k] is None else row[k]:>8}" for k in ("p50", "p95", "max"))
        say(f"{name:28}{cells}{row['n']:>5}")
    say(f"sessions with every model's answer: {report['complete']}/{report['sessions']}; "
        f"same answers in every session: {report['same_answers']}")
    for failure in report["failures"]:
        say(f"  session {failure['index']}: {failure['error'] or failure['problems'] or failure['cards']}")
    training = report.get("training")
    if training:
        end = training.get("at_end") or {}
        say(f"training job: {training['at_start']['run_id']} running at the start; at the end {end.get('state')} "
            f"(epoch {end.get('epoch')}), then {(training.get('final') or {}).get('state')}")
    problems = report["server_log_problems"]
    say(f"server log ERROR/Traceback/exception lines: {len(problems)}")
    for line in problems[:40]:
        say(f"  | {line}")
    cpu = report["cpu"]
    say(f"CPU while the sessions ran ({cpu['wall_s']} s x {cpu['cores']} cores): machine busy "
        f"{cpu['machine_busy_s']} s, of which the server {cpu['server_s']} s (the rest: the browsers, "
        f"the job, anything else here); sessions as {report['browser']}")
    say(f"sessions wall {report['sessions_wall_s']} s; whole run {report['wall_s']} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from speedsign.bundles import default_models_dir

    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20, help="concurrent browser sessions (default 20)")
    p.add_argument("--models", type=Path, default=default_models_dir(),
                   help="published models folder (default $SPEEDSIGN_MODELS or the repository's models/)")
    p.add_argument("--image", type=Path, help="the photo to upload (default a gtsrb-speed32 50 km/h photo)")
    p.add_argument("--data", type=Path, help="the training job's data (default gtsrb-speed32 or rendered signs)")
    p.add_argument("--train-budget", default="10m",
                   help="the training job's --budget (default 10m: under 20 browsers on 2 cores, decoding the "
                        "data alone can outlast a shorter one, and the job refuses to go on; it is stopped after "
                        "the sessions)")
    p.add_argument("--no-train", action="store_true", help="no training job")
    p.add_argument("--one-thread", action="store_true", help="the server with OMP_NUM_THREADS=1")
    p.add_argument("--tabs", action="store_true",
                   help="sessions as tabs of one browser context (shared cache: less browser CPU), not a context each")
    p.add_argument("--timeout", type=float, default=600.0, help="hard limit for the sessions, seconds (default 600)")
    p.add_argument("--session-timeout", type=float, default=300.0, help="each wait of a session, seconds")
    p.add_argument("--work", type=Path, help="keep the server's folders and logs here (default a temporary folder)")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= 100:
        p.error("--sessions must be 1-100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from playwright.async_api import async_playwright  # noqa: F401
    except ImportError:
        print("the playwright package is not installed (pip install -r requirements-dev.txt)", file=sys.stderr)
        return 2
    if not (bs.CHROMIUM.is_file() and os.access(bs.CHROMIUM, os.X_OK)):
        print(f"{bs.CHROMIUM} is missing (apt-get install chromium, or set SPEEDSIGN_CHROMIUM)", file=sys.stderr)
        return 2
    try:
        report = run_load(models=args.models, sessions=args.sessions, image=args.image, data=args.data,
                          train=not args.no_train, train_budget=args.train_budget, timeout_s=args.timeout,
                          session_timeout_s=args.session_timeout, one_thread=args.one_thread, tabs=args.tabs,
                          work=args.work)
    except (RuntimeError, bs.pytest.fail.Exception) as error:  # streamlit_server fails the pytest way
        print(error, file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    ok = report["complete"] == report["sessions"] and not report["server_log_problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
