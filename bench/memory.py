"""Memory under a real cgroup limit: `python -m bench.memory [--models DIR] [--json FILE]`.

The app (`streamlit run streamlit_app.py` on 127.0.0.1) runs in a memory cgroup of its own with
a hard limit, as on a hosted box, while headless Chromium (outside the group) drives it:

(a) serving: 3 sessions at once visit Home, then Classify, upload a photo and get every
    published model's answer; limit --serve-limit-mb (default 1000 MB = 1e9 bytes);
(b) serving while training: the limit raised to --train-limit-mb (default 2700 MB), one `fast`
    preset scratch job (the heaviest) launched with the server's environment into the same
    group, and 3 sessions going round Home and Classify until the job ends.

Reported per scenario: the group's peak (the kernel's high-water mark), the largest resident
(anonymous) part seen, the largest RSS of the server and of the job, how often the limit was
hit (the kernel then reclaims page cache) and whether anything was OOM-killed.

The limit: cgroup v2 (a child group with memory.max, memory.peak, memory.events) where the
memory controller is there, else cgroup v1 (memory.limit_in_bytes, memory.max_usage_in_bytes,
memory.oom_control's oom_kill). Needs root (or a delegated group). The server is started from
inside the group (this process joins it for the start and leaves), so all its memory is
charged there; the job joins it before it execs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import load
from bench.load import bs

MB = 1_000_000
SAMPLE_S = 0.2


# ---------------------------------------------------------------- the memory cgroup

class MemoryGroup:
    """A child memory cgroup of this process's own group: limit, peak, OOM kills, membership."""

    def __init__(self, name: str) -> None:
        self.version, mount, own = _find_memory_hierarchy()
        self.parent = Path(mount) / own.lstrip("/")
        self.path = self.parent / name
        if self.version == 2:
            controllers = (self.parent / "cgroup.subtree_control").read_text().split()
            if "memory" not in controllers:
                try:
                    (self.parent / "cgroup.subtree_control").write_text("+memory")
                except OSError as error:
                    raise RuntimeError(f"cannot enable the memory controller below {self.parent} ({error}): "
                                       "a cgroup v2 group with processes cannot delegate it; run this "
                                       "under `systemd-run --scope -p Delegate=yes` or as root in a leaf") from error
        self.path.mkdir(exist_ok=True)

    # files by version
    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == 1 else v2)

    def set_limit(self, limit: int) -> None:
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")
            return
        limit_file, memsw = self.path / "memory.limit_in_bytes", self.path / "memory.memsw.limit_in_bytes"
        # memsw (memory + swap) must stay >= the memory limit: raise it first, lower it last
        order = [memsw, limit_file] if limit > int(limit_file.read_text()) else [limit_file, memsw]
        for path in order:
            if path.exists():
                path.write_text(str(limit))

    def limit(self) -> int:
        text = self._file("memory.limit_in_bytes", "memory.max").read_text().strip()
        return -1 if text == "max" else int(text)

    def current(self) -> int:
        return int(self._file("memory.usage_in_bytes", "memory.current").read_text())

    def reset_peak(self) -> bool:
        """Start a new high-water mark (v1 always; v2 from Linux 6.12); False where it cannot."""
        try:
            self._file("memory.max_usage_in_bytes", "memory.peak").write_text("0")
            return True
        except OSError:
            return False

    def peak(self) -> int | None:
        try:
            return int(self._file("memory.max_usage_in_bytes", "memory.peak").read_text())
        except (OSError, ValueError):
            return None

    def stat(self) -> dict[str, int]:
        values = {}
        for line in self._file("memory.stat", "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
        return values

    def resident(self, stat: dict[str, int]) -> int:
        """The part the kernel cannot drop: anonymous memory (heaps, tensors) and shmem."""
        if self.version == 2:
            return stat.get("anon", 0) + stat.get("shmem", 0)
        return stat.get("total_rss", stat.get("rss", 0)) + stat.get("total_shmem", stat.get("shmem", 0))

    def events(self) -> dict[str, int]:
        """oom_kill (processes killed), limit_hits (times usage met the limit)."""
        if self.version == 2:
            text = (self.path / "memory.events").read_text()
            values = dict(line.split() for line in text.splitlines() if line.strip())
            return {"oom_kill": int(values.get("oom_kill", 0)), "limit_hits": int(values.get("max", 0)),
                    "oom": int(values.get("oom", 0))}
        control = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return {"oom_kill": int(control.get("oom_kill", 0)), "under_oom": int(control.get("under_oom", 0)),
                "limit_hits": int((self.path / "memory.failcnt").read_text())}

    def reset_events(self) -> None:
        if self.version == 1:
            with contextlib.suppress(OSError):
                (self.path / "memory.failcnt").write_text("0")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def leave(self, pid: int) -> None:
        (self.parent / "cgroup.procs").write_text(str(pid))

    def join_command(self) -> list[str]:
        """A prefix that moves the command into the group before it execs."""
        return ["sh", "-c", f'echo $$ > "{self.path / "cgroup.procs"}" && exec "$@"', "sh"]

    def remove(self) -> None:
        """Every process left in it back to the parent, then the group removed."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                self.leave(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _find_memory_hierarchy() -> tuple[int, str, str]:
    """(version, mount point, this process's group path) of the memory controller."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        groups[controllers] = path
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, options) = left.split(), right.split()[:3]
        mounts.append((fstype, fields[3], fields[4], options))  # type, root, mount point, super options
    for fstype, root, point, _options in mounts:
        if fstype == "cgroup2" and "" in groups:
            own = groups[""]
            controllers = Path(point, own.lstrip("/"), "cgroup.controllers")
            if controllers.is_file() and "memory" in controllers.read_text().split():
                return 2, point, _relative(own, root)
    for fstype, root, point, options in mounts:
        if fstype == "cgroup" and "memory" in options.split(","):
            own = next((p for c, p in groups.items() if "memory" in c.split(",")), "/")
            return 1, point, _relative(own, root)
    raise RuntimeError("no memory cgroup here (neither cgroup v2 with the memory controller nor v1 memory)")


def _relative(own: str, root: str) -> str:
    return own[len(root):] if root != "/" and own.startswith(root) else own


# ---------------------------------------------------------------- sampling

class Sampler:
    """Samples the group every SAMPLE_S: usage, the resident part, each process's RSS."""

    def __init__(self, group: MemoryGroup) -> None:
        self.group = group
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reset()

    def reset(self) -> None:
        self.max_usage = self.max_resident = 0
        self.max_rss: dict[str, dict[str, int]] = {}  # role -> largest rss, anon, file seen
        self.samples = 0

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            with contextlib.suppress(OSError, ValueError):
                self.sample()

    def sample(self) -> None:
        stat = self.group.stat()
        self.max_usage = max(self.max_usage, self.group.current())
        self.max_resident = max(self.max_resident, self.group.resident(stat))
        for pid in self.group.pids():
            role, sizes = _process(pid)
            if role:
                seen = self.max_rss.setdefault(role, {})
                for key, value in sizes.items():
                    seen[key] = max(seen.get(key, 0), value)
        self.samples += 1

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _process(pid: int) -> tuple[str | None, dict[str, int]]:
    """('server' | 'job' | 'other', {rss, anon, file} bytes) of a process; (None, {}) when it is gone.

    file: the mapped files (torch's libraries above all). Pages that another process here read
    first are charged to that process's group, not to ours: on a fresh box they would be ours."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, {}
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
              if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"))}
    sizes = {"rss": fields.get("VmRSS", 0), "anon": fields.get("RssAnon", 0) + fields.get("RssShmem", 0),
             "file": fields.get("RssFile", 0)}
    role = "server" if "streamlit" in command else ("job" if "speedsign" in command else "other")
    return role, sizes


def mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def scenario_report(group: MemoryGroup, sampler: Sampler, *, limit: int, reset_ok: bool) -> dict[str, Any]:
    sampler.sample()
    peak = group.peak() if reset_ok else None
    report = {"limit_mb": mb(limit), "peak_mb": mb(peak if peak is not None else sampler.max_usage),
            "peak_source": "kernel high-water mark" if peak is not None else f"sampled every {SAMPLE_S} s",
            "peak_resident_mb": mb(sampler.max_resident), "current_mb": mb(group.current()),
            "max_rss_mb": {role: {k: mb(v) for k, v in sizes.items()}
                           for role, sizes in sorted(sampler.max_rss.items())},
            "events": group.events(), "samples": sampler.samples}
    # On a fresh box every page the group maps is its own: its anonymous peak plus the mapped files
    # (the largest mapping, once: the server and the job map the same torch libraries).
    mapped = max((sizes.get("file", 0) for sizes in sampler.max_rss.values()), default=0)
    report["fresh_box_estimate_mb"] = mb(sampler.max_resident + mapped)
    return report


# ---------------------------------------------------------------- the scenarios

async def busy_sessions(url: str, *, count: int, image: Path, expected: int, keep_going: Callable[[], bool],
                        deadline: float, timeout_s: float, pause_s: float = 15.0) -> list[load.Session]:
    """`count` sessions, each going round Home -> Classify -> upload -> answers, a fresh browser
    context every round and pause_s between rounds, while keep_going() and before deadline
    (time.monotonic)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(bs.CHROMIUM), headless=True,
                                                   args=bs.CHROMIUM_ARGS)

        async def rounds(index: int) -> list[load.Session]:
            done: list[load.Session] = []
            while keep_going() and time.monotonic() < deadline:
                done.append(await load.one_session(browser, url, load.Session(index), image=image, expected=expected,
                                                   opened=None, timeout_ms=timeout_s * 1000, home=True))
                # a pause between rounds: users who look at the answers; without it the three
                # browsers and the server starve the job on 2 cores
                for _ in range(int(pause_s * 10)):
                    if not keep_going():
                        break
                    await asyncio.sleep(0.1)
            return done

        try:
            results = await asyncio.wait_for(asyncio.gather(*(rounds(i) for i in range(count))),
                                             timeout=max(1.0, deadline - time.monotonic()) + timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await browser.close()
    return [session for per in results for session in per]


def summarise(sessions: list[load.Session], expected: int) -> dict[str, Any]:
    """At least `expected` answers: the job's own model joins Classify once it is done."""
    complete = [s for s in sessions if s.complete(expected, exact=False)]
    return {"sessions": len(sessions), "complete": len(complete),
            "time_to_answer_s": load.percentiles([s.answers_s for s in complete]),
            "failures": [s.to_json() for s in sessions if not s.complete(expected, exact=False)][:10]}


def run_memory(*, models: Path, serve_limit: int = 1000 * MB, train_limit: int = 2700 * MB,
               sessions: int = 3, image: Path | None = None, data: Path | None = None,
               train_budget: str | None = None, train_timeout_s: float = 600.0, session_timeout_s: float = 240.0,
               drop_caches: bool = False, train: bool = True, work: Path | None = None,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    from speedsign.machine import describe_machine

    models = Path(models).resolve()
    group = MemoryGroup(f"speedsign-bench-{os.getpid()}")
    report: dict[str, Any] = {"machine": describe_machine(), "cgroup": f"v{group.version} {group.path}",
                              "models": [], "serve": None, "train": None}
    job = None
    try:
        with load.workspace(work) as folder:
            runs, cache, log = folder / "runs", folder / "cache", folder / "streamlit.log"
            runs.mkdir(exist_ok=True)
            expected = load.expected_models(models, runs)
            if not expected:
                raise RuntimeError(f"no usable published model in {models}")
            report["models"] = expected
            photo = Path(image) if image else load.default_image(folder)
            dataset = load.data_root_with(folder, Path(data) if data else load.default_data(folder))
            env = load.server_env(runs=runs, data_root=dataset.parent, cache=cache, models=models, one_thread=False)
            group.set_limit(serve_limit)
            group.reset_events()
            with contextlib.ExitStack() as stack:
                if drop_caches:  # the libraries' pages are then read again, by the server: charged to the group
                    os.sync()
                    Path("/proc/sys/vm/drop_caches").write_text("1")
                # The server starts inside the group: this process joins it for the fork, then leaves.
                group.add(os.getpid())
                try:
                    url = stack.enter_context(bs.streamlit_server(runs=runs, data=dataset.parent, cache=cache,
                                                                  log=log, models=models, one_thread=False,
                                                                  start_s=120))
                finally:
                    group.leave(os.getpid())
                sampler = stack.enter_context(Sampler(group))
                time.sleep(2)
                sampler.sample()
                idle = {"server_rss_mb": mb(sampler.max_rss.get("server", {}).get("rss")),
                        "group_mb": mb(group.current())}
                say(f"server idle: {idle}")

                # (a) serving
                reset_ok = group.reset_peak()
                sampler.reset()
                say(f"(a) {sessions} sessions, Home then Classify, limit {serve_limit / MB:.0f} MB")
                outcome = asyncio.run(load.run_sessions(url, sessions=sessions, image=photo, expected=len(expected),
                                                        timeout_s=session_timeout_s,
                                                        session_timeout_s=session_timeout_s,
                                                        lone_first=False, home=True))
                serve = scenario_report(group, sampler, limit=serve_limit, reset_ok=reset_ok)
                serve.update(idle=idle, server_alive=bs._healthy(url), **summarise(outcome["sessions"], len(expected)),
                             mapped_file_charged_mb=mb(group.stat().get("total_mapped_file",
                                                                         group.stat().get("file_mapped", 0))))
                report["serve"] = serve
                if not train:
                    report["server_log_problems"] = load.log_problems(log)
                    return report
                say(f"(a) {json.dumps({k: serve[k] for k in ('peak_mb', 'peak_resident_mb', 'max_rss_mb', 'events')})}")

                # (b) serving while a fast scratch job trains in the same group
                group.set_limit(train_limit)
                group.reset_events()
                reset_ok = group.reset_peak()
                sampler.reset()
                events_before = group.events()
                train = load.train_command(data=dataset, runs=runs, budget=train_budget)
                command = group.join_command() + train
                shown = " ".join(train[1:])
                say(f"(b) training `{shown}` in the group, limit {train_limit / MB:.0f} MB")
                started = time.monotonic()
                job = load.start_job(command, env=env, log=folder / "train.log")
                deadline = started + train_timeout_s
                running = load.wait_training(runs, job, timeout_s=240, log=folder / "train.log")
                say(f"(b) {running['run_id']} running; {sessions} sessions go round until it ends")
                busy = asyncio.run(busy_sessions(url, count=sessions, image=photo, expected=len(expected),
                                                 keep_going=lambda: job.poll() is None, deadline=deadline,
                                                 timeout_s=session_timeout_s))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.wait(timeout=max(1.0, deadline - time.monotonic()))
                timed_out = job.poll() is None
                load.stop_job(job)
                train_report = scenario_report(group, sampler, limit=train_limit, reset_ok=reset_ok)
                train_report.update(server_alive=bs._healthy(url), job_exit_code=job.returncode,
                                    job_timed_out=timed_out, job_seconds=round(time.monotonic() - started, 1),
                                    job=load.job_state(runs), job_command=shown, events_before=events_before,
                                    **summarise(busy, len(expected)))
                if job.returncode not in (0, None):
                    train_report["job_log_tail"] = bs._tail(folder / "train.log", 20)
                report["train"] = train_report
            report["server_log_problems"] = load.log_problems(log)
    finally:
        load.stop_job(job)
        group.remove()
    return report


def print_report(report: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(f"machine: {report['machine']}")
    say(f"cgroup: {report['cgroup']}; models: {', '.join(report['models'])}")
    say(f"{'scenario':34}{'limit MB':>9}{'peak MB':>9}{'anon':>7}{'fresh':>7}{'server':>8}{'job':>8}"
        f"{'hits':>6}{'OOM':>5}{'ok':>7}")
    for key, name in (("serve", "(a) 3 sessions Home+Classify"), ("train", "(b) (a) + fast scratch job")):
        row = report.get(key)
        if not row:
            say(f"{name:34}  (not run)")
            continue
        rss = row["max_rss_mb"]
        ok = f"{row['complete']}/{row['sessions']}"
        say(f"{name:34}{row['limit_mb']:>9.0f}{row['peak_mb']:>9.1f}{row['peak_resident_mb']:>7.0f}"
            f"{row['fresh_box_estimate_mb']:>7.0f}"
            f"{(rss.get('server') or {}).get('rss') or 0:>8.0f}{(rss.get('job') or {}).get('rss') or 0:>8.0f}"
            f"{row['events']['limit_hits']:>6}"
            f"{row['events']['oom_kill']:>5}{ok:>7}")
    say("peak: the group's high-water mark; anon: its largest anonymous part; fresh: anon + the largest mapped "
        "files (what a fresh box, with no page of torch cached by others, would charge); server, job: largest RSS")
    serve, train = report.get("serve") or {}, report.get("train") or {}
    if serve:
        say(f"server idle before any session: {serve['idle']}; (a) time to answer {serve['time_to_answer_s']}; "
            f"mapped files charged to the group: {serve.get('mapped_file_charged_mb')} MB")
    if train:
        job = train.get("job") or {}
        say(f"(b) job {job.get('run_id')}: {job.get('state')} after {train['job_seconds']} s "
            f"(exit {train['job_exit_code']}, val acc {job.get('best_val_acc')}); server alive {train['server_alive']}")
        for failure in train.get("failures", []):
            say(f"  session failure: {failure['error'] or failure['problems']}")
    problems = report.get("server_log_problems") or []
    say(f"server log ERROR/Traceback/exception lines: {len(problems)}")
    for line in problems[:40]:
        say(f"  | {line}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from speedsign.bundles import default_models_dir

    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=default_models_dir(),
                   help="published models folder (default $SPEEDSIGN_MODELS or the repository's models/)")
    p.add_argument("--serve-limit-mb", type=float, default=1000.0, help="limit of (a), MB of 1e6 bytes")
    p.add_argument("--train-limit-mb", type=float, default=2700.0, help="limit of (b), MB of 1e6 bytes")
    p.add_argument("--image", type=Path, help="the photo to upload (default a gtsrb-speed32 50 km/h photo)")
    p.add_argument("--data", type=Path, help="the training job's data (default gtsrb-speed32 or rendered signs)")
    p.add_argument("--train-budget", help="the job's --budget (default the fast preset's own)")
    p.add_argument("--drop-caches", action="store_true",
                   help="root: drop the page cache before the server starts, so that the libraries' pages it maps "
                        "are charged to its group as on a fresh box (while no other torch process holds them)")
    p.add_argument("--serve-only", action="store_true", help="scenario (a) only")
    p.add_argument("--work", type=Path, help="keep the server's folders and logs here")
    p.add_argument("--json", type=Path, help="write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_memory(models=args.models, serve_limit=int(args.serve_limit_mb * MB),
                            train_limit=int(args.train_limit_mb * MB), image=args.image, data=args.data,
                            train_budget=args.train_budget, drop_caches=args.drop_caches,
                            train=not args.serve_only, work=args.work)
    except (RuntimeError, OSError, bs.pytest.fail.Exception) as error:
        print(f"bench.memory: {error}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    fits = all(report.get(k) and report[k]["events"]["oom_kill"] == 0 and report[k]["complete"] == report[k]["sessions"]
               and report[k]["server_alive"] for k in (("serve",) if args.serve_only else ("serve", "train")))
    return 0 if fits and not report.get("server_log_problems") else 1


if __name__ == "__main__":
    sys.exit(main())
