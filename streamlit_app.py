"""speedsign dashboard: `streamlit run streamlit_app.py`.

The router: page set-up, first-start data (the synthetic sign set when there is none), the
shared sidebar (data set, device), then the chosen page. Pages live in app_pages/ and only call
`speedsign.ui` and the library.
"""

import streamlit as st

from speedsign import ui

st.set_page_config(page_title="speedsign", page_icon=":material/speed:", layout="wide")

ui.first_start()
page = st.navigation([
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/curves.py", title="Learning curves", icon=":material/show_chart:"),
    st.Page("app_pages/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    st.Page("app_pages/classify.py", title="Classify", icon=":material/photo_camera:"),
])
ui.sidebar()
ui.show_notices()
page.run()
