"""The Streamlit frontend of frontbench."""
