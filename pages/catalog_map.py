"""Catalog map (being written)."""

import streamlit as st

st.title(":material/scatter_plot: Catalog map")
