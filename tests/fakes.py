"""Test doubles shared by several test files."""

from __future__ import annotations

import numpy as np

from vpm.models.embeddings import Embedder


class ColourMeanEmbedder(Embedder):
    """An image-only model (like the offline fallback) whose vector is the mean colour: instant, no torch."""

    model_id = "fake-colour"
    display_name = "fake colour embedder"
    dim = 3
    supports_text = False
    fallback_reason = None
    device = "cpu"

    def _embed_image_batch(self, images):
        return np.array([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) + 1.0 for im in images])
