"""speedsign dashboard: `streamlit run streamlit_app.py`.

The router: page set-up, first-start data (the synthetic sign set when there is none), the
shared sidebar (data set, device), then the chosen page. Pages live in pages/ and only call
`speedsign.ui` and the library.
"""

import streamlit as st

from speedsign import ui

st.set_page_config(page_title="speedsign", page_icon=":material/speed:", layout="wide")

ui.first_start()
page = st.navigation([
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/curves.py", title="Learning curves", icon=":material/show_chart:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/photo_camera:"),
])
ui.sidebar()
ui.show_notices()
with ui.routing():
    page.run()
