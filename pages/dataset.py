"""Dataset: choose or create a data set, then look at it before training on it."""

import streamlit as st

from speedsign import plots, ui, workspace
from speedsign.config import APPROACHES, PRESETS

ui.through_router()

st.title("Dataset")

st.subheader("Choose or create a data set")
synth_tab, gtsrb_tab, upload_tab, folder_tab = st.tabs(
    ["Synthetic signs", "GTSRB import", "Upload a zip", "Folder on the server"])
with synth_tab:
    st.caption("Renders German speed-limit signs as a dash camera sees them (9 classes, tracks of 5 frames).")
    left, middle, right = st.columns(3)
    per_class = left.number_input("Images per class", 10, 5000, workspace.FIRST_RUN_PER_CLASS, step=50)
    size = middle.selectbox("Image size (px)", [32, 48, 64, 96, 128], index=2)
    seed = right.number_input("Seed", 0, 2**31 - 1, 0)
    if st.button("Render a synthetic set", icon=":material/brush:"):
        ui.render_synth(per_class=int(per_class), size=int(size), seed=int(seed))
with gtsrb_tab:
    st.caption("The nine speed-limit classes of the German Traffic Sign Recognition Benchmark, split by track.")
    source = st.text_input("GTSRB_Final_Training_Images.zip or its extracted folder on the server",
                           placeholder="empty: download it (needs internet)")
    if st.button("Import GTSRB", icon=":material/download:"):
        ui.import_gtsrb(source)
with upload_tab:
    st.caption("A zip in the report's layout: `train/<class>/<image>` and `val/<class>/<image>` "
               "(`test/` optional), or `<class>/<image>` alone (val is then drawn from it by track).")
    upload = st.file_uploader("Data-set zip", type=["zip"], key="dataset-zip")
    name = st.text_input("Name", placeholder="the zip's name", key="dataset-zip-name")
    if upload is not None and st.button("Import the zip", icon=":material/upload:"):
        ui.import_upload(name or upload.name, upload.getvalue())
with folder_tab:
    folder = st.text_input("Folder path on the server", placeholder="/srv/signs",
                           help="A folder holding train/<class>/ (and val/), or <class>/ folders.",
                           key="server-folder")
    if st.button("Use this folder", icon=":material/folder_open:"):
        ui.choose_server_folder(folder)

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
    st.plotly_chart(plots.class_counts_bar(workspace.counts_frame(index)), key="counts")
    st.dataframe(workspace.counts_table(index))
with sizes_col:
    st.markdown("**Original image sizes**")
    sizes = ui.size_table(index)
    if sizes.empty:
        st.caption("No readable image.")
    else:
        st.plotly_chart(plots.size_histogram(sizes), key="sizes")
        st.dataframe(sizes.describe().loc[["min", "50%", "max"]].rename(index={"50%": "median"}))

st.subheader("Samples per class")
per_row = st.slider("Images per class", 1, 12, 6)
for class_name, files in workspace.sample_files(index, per_class=per_row).items():
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
candidates = workspace.sample_files(index, per_class=50).get(aug_class, [])
if candidates:
    choice = st.slider("Image", 1, len(candidates), 1, key="aug-image") if len(candidates) > 1 else 1
    ui.augmentation_preview(index, candidates[choice - 1], approach=approach, preset=preset)

st.subheader("Leak check")
st.caption("Near-duplicate images shared by train and val (perceptual hash) inflate val accuracy.")
if st.toggle("Check this data set for leaks", key="leak-check"):
    ui.leak_report(index)
