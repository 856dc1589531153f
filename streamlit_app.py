"""speedsign dashboard: `streamlit run streamlit_app.py`.

The router: page set-up, first-start data (the synthetic sign set when there is none), the
shared sidebar (data set, device), then the chosen page. Pages live in pages/: each draws
its own widgets and calls the library; `speedsign.ui` holds what they share.
"""

from pathlib import Path

import streamlit as st

from speedsign import datasets, ui
from speedsign.errors import UserError
from speedsign.machine import limit_malloc_arenas

limit_malloc_arenas()  # each session's threads would keep arenas of their own (see its docstring)


def first_start() -> None:
    """A fresh machine: render the synthetic sign set now (about 15 s on 2 cores), with a progress bar."""
    if datasets.list_datasets():
        return
    placeholder = st.empty()
    with placeholder.container():
        st.info("No data set yet: creating the synthetic speed-limit sign set "
                f"({9 * datasets.FIRST_RUN_PER_CLASS:,} images). The Dataset page can also import "
                "GTSRB, your own zip, or a folder on the server.")
        try:
            report = datasets.ensure_first_dataset(progress=ui.progress_reporter("Rendering signs"))
        except (UserError, OSError) as error:
            st.error(ui.md(f"Could not create the synthetic data set: {error}"))
            return
    placeholder.empty()
    if report is not None:
        ui.notify("success", f"Created the synthetic sign set ({report.n_images:,} images in "
                             f"{report.seconds:.1f} s). Import GTSRB or upload your own on the Dataset page.")


# A local picture (64x64, drawn once with Pillow: red ring, white disc, 30), served by this
# server: a material icon as page_icon makes the browser fetch the favicon from fonts.gstatic.com.
ICON = Path(__file__).resolve().parent / "speedsign" / "icon.png"
st.set_page_config(page_title="speedsign", page_icon=ICON if ICON.is_file() else None, layout="wide")

first_start()
page = st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/curves.py", title="Learning curves", icon=":material/show_chart:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/photo_camera:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
])
ui.sidebar()
ui.show_notices()
with ui.routing():
    page.run()
