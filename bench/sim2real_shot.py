"""The Classify page answering a real photo with a model trained only on synthetic signs.

    python -m bench.sim2real_shot --work /tmp/speedsign-sim2real \
        --out docs/screenshots/classify_sim2real.png

Starts `streamlit run streamlit_app.py` on the runs and the synthetic set of a
`python -m bench.sim2real` work folder (nothing else: the app knows no real photo), uploads one
real GTSRB photo from the untouched tracks in Debian's Chromium and takes the screenshot. The
photo is the first of a fixed list, in file order, that the model reads correctly; the
command prints how many it tried and the model's accuracy on all of them, so the picture is
read against the whole.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from bench.sim2real import REAL_DEFAULT
from speedsign.data import scan_dataset
from speedsign.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the real-browser tests' server and browser helpers
bs = importlib.import_module("browser_support")
CLASSES = ("speed_60", "speed_80", "speed_100", "speed_30")  # the first class with a right answer is shown


def candidates(real: Path) -> list[Path]:
    """The middle frame of the first untouched track of each class in CLASSES."""
    index = scan_dataset(real, val_fraction=0.2, seed=0)
    chosen = []
    for name in CLASSES:
        label = index.classes.index(name)
        files = sorted(s.path for s in index.samples("train") if s.label == label)
        track = [f for f in files if Path(f).name.split("_")[0] == Path(files[0]).name.split("_")[0]]
        chosen.append(real / track[len(track) // 2])
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim2real_shot")
    parser.add_argument("--work", type=Path, default=Path("/tmp/speedsign-sim2real"))
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "classify_sim2real.png")
    args = parser.parse_args()
    runs = args.work / "runs"
    run_dir = next(p for p in sorted(runs.iterdir()) if p.name.startswith("scratch-"))
    predictor = Predictor(run_dir)
    photos = candidates(args.real)
    answers = [predictor.predict(photo, top=1).label for photo in photos]
    truths = [p.parent.name for p in photos]
    right = [a == t for a, t in zip(answers, truths, strict=True)]
    print(f"candidates: {[(p.name, t, a) for p, t, a in zip(photos, truths, answers, strict=True)]}; "
          f"{sum(right)}/{len(right)} right")
    if not any(right):
        print("no candidate photo is read correctly: no screenshot", file=sys.stderr)
        return 1
    photo = photos[right.index(True)]
    work = Path(tempfile.mkdtemp(prefix="speedsign-shot-"))
    data = work / "data"
    data.mkdir()
    (data / "synth").symlink_to((args.work / "synth").resolve(), target_is_directory=True)
    with bs.streamlit_server(runs=runs, data=data, cache=work / "cache", log=work / "log.txt",
                             start_s=120, one_thread=False) as url:
        with bs.sync_playwright()() as p:
            browser = p.chromium.launch(executable_path=str(bs.CHROMIUM), args=bs.CHROMIUM_ARGS)
            page = browser.new_page(viewport=bs.VIEWPORT)
            bs.open_page(page, f"{url}/classify", timeout_ms=120_000)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                ".some(c => c.innerText.includes('Trained on'))", timeout=120_000)
            bs.wait_idle(page, timeout_ms=120_000)
            bs.assert_clean(page, "classify")
            bs.screenshot(page, args.out)
            browser.close()
    print(f"{photo} ({photo.parent.name}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
