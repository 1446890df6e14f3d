"""The Gradio frontend of frontbench."""
