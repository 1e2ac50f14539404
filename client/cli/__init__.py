"""The `lenscope` command line: one module per noun; app.py composes them."""
