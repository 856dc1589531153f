"""Many sessions at once: five Classify pages render together while a real job trains.

Each thread drives its own AppTest session (its own session state, like five browser tabs);
they share the process-wide model cache (st.cache_resource), as real sessions do. A tiny
real training runs as a background job the whole time, started the way the Train page starts
one (`jobs.launch`), and is cancelled at the end with the page's cancel call.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest, app_test

from speedsign import jobs
from speedsign.config import resolve_config
from speedsign.job import TrainRequest
from speedsign.runs import effective_state, read_status

from app_support import answers  # how the Classify page shows an answer, sure or not

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
SESSIONS = 5


@contextlib.contextmanager
def one_runtime_for_all_sessions():
    """One Streamlit runtime shared by every session, as a real server has.

    AppTest is built for one session at a time: each run swaps process globals in and out
    (`Runtime._instance`, set then reset to None; `config.get_option`, patched for
    "global.appTest" and restored). Five threads would race on those swaps (a session
    finding no runtime mid-run, or losing the app-test option), which tests AppTest, not the
    app. So here the runtime is set once for all, and the per-run swaps land on a stand-in.
    """
    from unittest import mock

    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1.util import patch_config_options

    shared = mock.MagicMock(spec=Runtime)
    shared.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    shared.dataframe_source_mgr = DataframeSourceManager()
    shared.cache_storage_manager = MemoryCacheStorageManager()
    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    shared.bidi_component_registry = components

    class StandIn:
        _instance = None

    previous = Runtime._instance
    with (mock.patch.object(app_test, "Runtime", StandIn),
          mock.patch.object(app_test, "patch_config_options", lambda overrides: contextlib.nullcontext()),
          patch_config_options({"global.appTest": True})):
        Runtime._instance = shared
        try:
            yield
        finally:
            Runtime._instance = previous


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def state_of(run_dir: Path) -> str:
    try:
        status = read_status(run_dir)
    except ValueError:
        return ""
    return effective_state(status)[0] if status else ""


def test_five_classify_sessions_render_while_a_job_trains(
        runs_with_results: dict[str, Path], synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_dir in runs_with_results.values():  # the finished models, beside the job's new run
        (runs / run_dir.name).symlink_to(run_dir, target_is_directory=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth").symlink_to(synth_dir, target_is_directory=True)
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    monkeypatch.setenv("SPEEDSIGN_DATA", str(data))

    # Enough epochs to outlast the sessions; cancelled at the end.
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 200, "batch_size": 32,
                                                            "seed": 7})
    launch = jobs.launch(TrainRequest(config=config, data_dir=synth_dir, runs_dir=runs, device="cpu"))
    assert launch.state == "queued" and launch.pid is not None
    try:
        wait_for(lambda: state_of(launch.run_dir) == "running", timeout=60, what="the job to start")
        buffer = io.BytesIO()
        Image.open(sorted((synth_dir / "train" / "speed_30").iterdir())[0]).convert("RGB").save(buffer, "PNG")
        photo = buffer.getvalue()
        results: dict[int, object] = {}
        barrier = threading.Barrier(SESSIONS)

        def session(number: int) -> None:
            try:
                at = AppTest.from_file(str(APP), default_timeout=90).run()
                at.switch_page("pages/classify.py").run()
                barrier.wait(timeout=60)  # all five classify at the same moment
                at.file_uploader(key="classify-upload").set_value(("sign.png", photo, "image/png")).run()
                results[number] = at
            except BaseException as error:  # reported by the main thread
                results[number] = error

        threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
        with one_runtime_for_all_sessions():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=180)
        assert len(results) == SESSIONS
        for number, result in sorted(results.items()):
            assert isinstance(result, AppTest), f"session {number}: {result!r}"
            assert not result.exception, [e.value for e in result.exception]
            assert not result.error, [e.value for e in result.error]
            assert len(answers(result)) == len(runs_with_results), f"session {number}"
        # The same photo, the same models: every session got the same answers.
        first = answers(results[0])
        assert all(answers(r) == first for r in results.values())
        assert state_of(launch.run_dir) == "running", "the job stopped while the sessions ran"
    finally:
        jobs.request_cancel(launch.run_dir)
        try:
            os.waitpid(launch.pid, 0)  # our child: reap it, so it does not linger as a zombie
        except ChildProcessError:
            pass
    assert state_of(launch.run_dir) == "cancelled"
