"""Dataset: choose or create a data set, then look at it before training on it."""

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from speedsign import datasets, faces, plots, quotas, ui
from speedsign.config import APPROACHES, AUTO_MIN_EPOCHS, PRESETS
from speedsign.data import DatasetIndex, image_sizes
from speedsign.errors import UserError
from speedsign.leaks import find_leaks
from speedsign.storage import default_data_dir
from speedsign.synth import DEFAULT_FRAMES_PER_TRACK

Progress = Callable[[int, int], None]
Work = Callable[[Progress], tuple[Path, str]]


@st.cache_data(max_entries=8, show_spinner="Reading image sizes…")
def size_table(root: str, fingerprint: str) -> pd.DataFrame:
    return datasets.sizes_frame(image_sizes(ui.scan(root)))


@st.cache_data(max_entries=8, show_spinner=False)
def leak_table(root: str, fingerprint: str, max_distance: int = 4) -> pd.DataFrame:
    return find_leaks(ui.scan(root), max_distance=max_distance)


@st.cache_data(ttl=10, max_entries=8, show_spinner=False)
def real_dataset(data_root: str, current_root: str | None, current_fingerprint: str,
                 _current: DatasetIndex | None) -> DatasetIndex | None:
    return faces.find_real_dataset(Path(data_root), _current)


@st.cache_data(max_entries=4, show_spinner="Rendering the faces…")
def face_table(root: str | None, fingerprint: str, _real: DatasetIndex | None) -> list[faces.FaceRow]:
    return faces.face_rows(_real)


def face_comparison() -> None:
    """Per class: the flat face, samples as rendered, and real photos of the same class."""
    path = ui.current_dataset()
    try:
        current = ui.scan(path) if path is not None else None
    except UserError:
        current = None  # "In use" below says why the set cannot be used
    real = real_dataset(str(default_data_dir()), str(current.root) if current else None,
                        current.fingerprint if current else "", current)
    if real is None:
        st.info("No real photos here to compare with: import GTSRB on the “GTSRB import” tab.")
    rows = face_table(str(real.root) if real else None, real.fingerprint if real else "", real)
    for row in rows:
        st.markdown(f"**{ui.md(row.class_name)}**")
        st.image([row.face, *row.rendered, *row.real], width=64)
        if real is None:
            st.caption("flat face · as rendered")
        elif row.real:
            st.caption(f"flat face · as rendered · real photos from {ui.md(real.root.name)}")
        else:
            st.caption(f"flat face · as rendered · no real photo of this class in {ui.md(real.root.name)}")


def create_dataset(label: str, work: Work, *, what: str, estimate: Callable[[], int]) -> None:
    """Run `work(progress)` with a progress bar; on success switch to the new data set.

    First, at the action itself: may this session write (public mode), and does the disk budget
    take `estimate()` more bytes. `work` returns the new folder and a message. A refusal
    (UserError: locked, over budget, bad zip, no classes, offline download) or a disk error is
    shown here, and nothing stored before is touched.
    """
    try:
        ui.require_write(what)
        ui.check_disk(estimate(), what)
        path, message = work(ui.progress_reporter(label))
    except (UserError, OSError) as error:
        st.error(ui.md(error), icon=":material/error:")
        return
    finally:
        quotas.forget_usage()
    ui.notify("success", message)
    ui.use_dataset(path)


def render_synth(progress: Progress, *, per_class: int, size: int, seed: int) -> tuple[Path, str]:
    out, report = datasets.create_synth(per_class=per_class, size=size, seed=seed, progress=progress)
    return out, f"Rendered {report.n_images:,} images into {out.name} in {report.seconds:.1f} s."


def gtsrb_source(text: str) -> str:
    """The typed GTSRB zip or folder, resolved inside the allowed roots ("" for the download)."""
    return str(ui.confined(text)) if text.strip() else ""


def import_gtsrb(progress: Progress, *, source: str) -> tuple[Path, str]:
    out, report = datasets.import_gtsrb(gtsrb_source(source), progress=progress)
    skipped = f" ({report.skipped} unreadable skipped)" if report.skipped else ""
    return out, f"Imported {report.n_images:,} GTSRB images into {out.name} in {report.seconds:.1f} s{skipped}."


def import_upload(progress: Progress, *, data: bytes, name: str) -> tuple[Path, str]:
    out, report, index = datasets.import_zip(data, name=name, progress=progress)
    skipped = f"; skipped {report.skipped} file(s), e.g. {', '.join(report.skipped_examples)}" \
        if report.skipped else ""
    return out, f"Imported {report.n_images:,} images in {len(index.classes)} classes into {out.name}{skipped}."


def choose_server_folder(text: str) -> None:
    """A folder on the server, inside the allowed roots once resolved (links and .. followed) and
    checked (layout, classes), before it becomes the data set."""
    try:
        ui.require_write("Using a folder on the server")
        index = datasets.check_server_folder(str(ui.confined(text)) if text.strip() else text)
    except (UserError, OSError) as error:
        st.error(ui.md(error), icon=":material/error:")
        return
    ui.notify("success", f"Using {index.root}: {sum(datasets.split_sizes(index).values()):,} images, "
                         f"{len(index.classes)} classes.")
    ui.use_dataset(index.root)


def augmentation_strip(index: DatasetIndex, relative: str, *, approach: str, preset: str) -> None:
    """One image as evaluated, then eight augmented versions."""
    try:
        original, versions, config = datasets.augmentation_preview(index.root, relative, approach=approach,
                                                                   preset=preset)
    except UserError as error:
        st.error(ui.md(error))
        return
    st.image([original, *versions], width=96)
    stretched = {"stretch": ", contrast stretched to its own dark and light levels",
                 "centre": ", contrast stretched to the dark and light levels of its middle"}.get(config.contrast, "")
    if config.augment == "auto":
        recipe = (f"“signs”, which recipe “auto” trains with when a run shows every image at least "
                  f"{AUTO_MIN_EPOCHS:g} times (a shorter run trains on the images as evaluated)")
    else:
        same = ": no augmentation, all eight are the same" if config.augment == "none" else ""
        recipe = f"“{config.augment}”{same}"
    st.caption(f"First: as evaluated ({config.img_size} px{stretched}). Then recipe {recipe}.")


def leak_report(index: DatasetIndex) -> None:
    """Near-duplicates shared by train and val, as a table and a few image pairs."""
    try:
        with st.spinner("Hashing images…", show_time=True):
            leaks = leak_table(str(index.root), index.fingerprint)
    except UserError as error:
        st.error(ui.md(error))
        return
    if leaks.empty:
        st.success("No near-duplicates between train and val.")
        return
    st.warning(f"{len(leaks)} near-duplicate pair(s) between train and val: val accuracy is inflated "
               "by these. Remove one image of each pair, or split by track.")
    st.dataframe(leaks, hide_index=True)
    for row in leaks.head(6).itertuples(index=False):
        pair = [ui.picture(index.root, f, fingerprint=index.fingerprint) for f in (row.train_file, row.val_file)]
        if all(p is not None for p in pair):
            st.image(pair, width=72)
        st.caption(f"{ui.md(row.train_file)} ↔ {ui.md(row.val_file)} (distance {row.distance})")


ui.through_router()

st.title("Dataset")

st.subheader("Choose or create a data set")
if ui.can_write():
    synth_tab, gtsrb_tab, upload_tab, folder_tab = st.tabs(
        ["Synthetic signs", "GTSRB import", "Upload a zip", "Folder on the server"])
    with synth_tab:
        st.caption("Renders German speed-limit signs as a dash camera sees them "
                   f"(9 classes, tracks of {DEFAULT_FRAMES_PER_TRACK} frames).")
        left, middle, right = st.columns(3)
        per_class = left.number_input("Images per class", 10, 5000, datasets.FIRST_RUN_PER_CLASS, step=50)
        sizes = [32, 48, 64, 96, 128]
        size = middle.selectbox("Image size (px)", sizes, index=sizes.index(datasets.FIRST_RUN_SIZE),
                                help="32 px is GTSRB's size: the sign is rendered small and resized, as real "
                                     "crops are.")
        seed = right.number_input("Seed", 0, 2**31 - 1, 0)
        if st.button("Render a synthetic set", icon=":material/brush:", key="synth-render"):
            create_dataset("Rendering signs", partial(render_synth, per_class=int(per_class), size=int(size),
                                                      seed=int(seed)),
                           what="Rendering a synthetic set",
                           estimate=partial(quotas.synth_bytes, int(per_class) * 9, int(size)))
    with gtsrb_tab:
        st.caption("The nine speed-limit classes of the German Traffic Sign Recognition Benchmark, split by track.")
        source = st.text_input("GTSRB_Final_Training_Images.zip or its extracted folder on the server",
                               placeholder="empty: download it (needs internet)", key="gtsrb-source")
        if st.button("Import GTSRB", icon=":material/download:", key="gtsrb-import"):
            create_dataset("Importing GTSRB", partial(import_gtsrb, source=source), what="Importing GTSRB",
                           estimate=partial(quotas.gtsrb_bytes, download=not source.strip()))
    with upload_tab:
        st.caption("A zip in the report's layout: `train/<class>/<image>` and `val/<class>/<image>` "
                   "(`test/` optional), or `<class>/<image>` alone (val is then drawn from it by track).")
        upload = st.file_uploader("Data-set zip", type=["zip"], key="dataset-zip")
        name = st.text_input("Name", placeholder="the zip's name", key="dataset-zip-name")
        if upload is not None and st.button("Import the zip", icon=":material/upload:", key="dataset-zip-import"):
            data = upload.getvalue()
            create_dataset("Unpacking the zip", partial(import_upload, data=data, name=name or upload.name),
                           what="Importing a zip", estimate=partial(quotas.zip_bytes, data))
    with folder_tab:
        folder = st.text_input("Folder path on the server", placeholder="/srv/signs",
                               help="A folder holding train/<class>/ (and val/), or <class>/ folders, inside "
                                    "the data folder, the runs folder or a folder the owner allowed.",
                               key="server-folder")
        if st.button("Use this folder", icon=":material/folder_open:", key="server-folder-use"):
            choose_server_folder(folder)
else:
    ui.owner_only("Creating a data set (rendering, GTSRB import, zip upload, a folder on the server)")
    st.caption("Choose one of the data sets already here in the sidebar.")

st.subheader("Synthetic faces and real photos")
st.caption("What the renderer draws, how it degrades it, and real photos of the same class.")
if st.toggle("Compare the synthetic faces with real photos", key="faces-toggle"):
    face_comparison()

index = ui.current_index()
if index is None:
    st.info("No data set in use yet: create or choose one above.")
    st.stop()

st.divider()
st.subheader(f"In use: {ui.md(index.root.name)}")
ui.dataset_summary(index)

counts_col, sizes_col = st.columns(2)
with counts_col:
    st.markdown("**Images per class and split**")
    st.plotly_chart(plots.class_counts_bar(datasets.counts_frame(index)), key="counts")
    st.dataframe(datasets.counts_table(index))
with sizes_col:
    st.markdown("**Original image sizes**")
    sizes = size_table(str(index.root), index.fingerprint)
    if sizes.empty:
        st.caption("No readable image.")
    else:
        st.plotly_chart(plots.size_histogram(sizes), key="sizes")
        st.dataframe(datasets.size_summary(sizes))

st.subheader("Samples per class")
per_row = st.slider("Images per class", 1, 12, 6)
for class_name, files in datasets.sample_files(index, per_class=per_row).items():
    pictures = [p for p in (ui.picture(index.root, f, fingerprint=index.fingerprint) for f in files) if p is not None]
    st.caption(ui.md(class_name))
    if pictures:
        st.image(pictures, width=72)

st.subheader("Augmentation preview")
st.caption("What training sees: one image, then eight augmented versions for the chosen preset.")
aug_cols = st.columns(3)
approach = aug_cols[0].selectbox("Approach", APPROACHES, key="aug-approach")
preset = aug_cols[1].selectbox("Preset", PRESETS, key="aug-preset")
aug_class = aug_cols[2].selectbox("Class", index.classes, key="aug-class", format_func=str)
candidates = datasets.sample_files(index, per_class=50).get(aug_class, [])
if candidates:
    choice = st.slider("Image", 1, len(candidates), 1, key="aug-image") if len(candidates) > 1 else 1
    augmentation_strip(index, candidates[choice - 1], approach=approach, preset=preset)

st.subheader("Leak check")
st.caption("Near-duplicate images shared by train and val (perceptual hash) inflate val accuracy.")
if st.toggle("Check this data set for leaks", key="leak-check"):
    leak_report(index)
