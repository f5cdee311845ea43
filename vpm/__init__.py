"""Visual Product Matcher: find the catalog products that look like a photo.

The core is importable without Streamlit and without torch; the model loads on first use.
"""

__version__ = "0.1.0"
