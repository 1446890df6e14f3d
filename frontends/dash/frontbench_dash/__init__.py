"""The Dash frontend of frontbench."""
