"""Sphinx configuration of the datalad-fmrif documentation.

Build with ``make docs`` (it first runs docs/transcripts.py against the
sandbox XNAT, then ``sphinx-build -W``): see the Makefile.
"""

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here / "_ext"))

import datalad_fmrif

project = "datalad-fmrif"
author = "the datalad-fmrif developers"
copyright = "the datalad-fmrif developers"
release = datalad_fmrif.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "fmrif_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "transcripts.py", "_ext"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# DataLad's Python API docstrings are numpydoc-style
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"

# where docs/transcripts.py wrote the commands and their output
fmrif_transcripts = "_build/transcripts"

html_theme = "furo"
html_title = f"datalad-fmrif {release}"
html_static_path = ["_static"]
html_css_files = ["fmrif.css"]
pygments_style = "sphinx"
# command lines: "--option" must stay two hyphens, quotes must stay straight
smartquotes = False
