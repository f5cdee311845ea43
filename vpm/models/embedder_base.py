"""The embedder contract: what every model turns images (and, when it reads words, texts) into.

`Embedder` is what vpm.models.embeddings loads and the rest of the app uses: CLIP through sentence-transformers
(vpm.models.clip_model), DINOv2 and SigLIP 2 through transformers (vpm.models.hf_models) and the built-in EfficientNet-Lite0
(vpm.models.builtin_model). Each carries what is particular to it: whether it reads words (`supports_text`), its default
cosines (`thresholds`) and its ONNX export (`export_onnx`), so the code around it never asks which kind it is.
It imports neither torch nor Pillow at import time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.core.errors import VpmError

if TYPE_CHECKING:
    from PIL import Image

Progress = Callable[[int, int], None]


class EmbeddingError(VpmError, RuntimeError):
    """An embedding request that cannot be served (e.g. text on an image-only model); the message says why."""


@dataclass(frozen=True)
class Thresholds:
    """A model's cosines before its catalog has a fit of its own: `image`, where a photo-to-photo match is as likely
    right as wrong (the midpoint of the score's prior curve, vpm.core.scoring); `text`, below which a text-to-photo match
    is hidden. They hide the clearly unrelated, they do not rank."""

    image: float = 0.6
    text: float = 0.2


class Embedder(ABC):
    """Turns images (and, when `supports_text`, texts) into L2-normalised float32 vectors of length `dim`."""

    model_id: str  # stable slug, the embedding-cache key
    display_name: str  # for people
    dim: int
    supports_text: bool
    fallback_reason: str | None  # why the configured model is not the one running, or None
    device: str
    runtime: str = "torch"  # what runs the network: "torch", "onnx-fp32" or "onnx-int8"
    runtime_reason: str | None = None  # why ONNX Runtime is not in use (export failed, VPM_RUNTIME=torch), or None
    thresholds: Thresholds = Thresholds()  # a model family's own cosines override these

    def embed_images(
        self, images: Sequence[Image.Image], batch_size: int = 32, progress: Progress | None = None
    ) -> np.ndarray:
        """Embed RGB images in batches; `progress(done, total)` follows each batch, ending at (n, n)."""
        if batch_size < 1:
            raise EmbeddingError(f"batch_size must be at least 1 (got {batch_size})")
        total = len(images)
        out = np.empty((total, self.dim), dtype=np.float32)
        for start in range(0, total, batch_size):
            batch = [_as_rgb(img, start + i) for i, img in enumerate(images[start : start + batch_size])]
            out[start : start + len(batch)] = self.embed_prepared(self._prepare_image_batch(batch))
            if progress is not None:
                progress(start + len(batch), total)
        return out

    def prepare_images(self, images: Sequence[Image.Image]) -> Any:
        """The CPU work before the network (checks, RGB, resize, normalise) for one batch, as `embed_prepared`
        takes it: a pipeline runs this on another thread while the network embeds the previous batch."""
        return self._prepare_image_batch([_as_rgb(img, i) for i, img in enumerate(images)])

    def embed_prepared(self, prepared: Any) -> np.ndarray:
        """The vectors of one batch made by `prepare_images` (embed_images = prepare_images + embed_prepared)."""
        return _l2_normalise(self._embed_image_batch(prepared))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed text queries into the same space as the images; only for models that embed text."""
        if not self.supports_text:
            raise EmbeddingError(
                f"The active model {self.display_name} embeds images only, so text search is not available. "
                "Search with a photo, or configure a model that reads words in VPM_MODEL (a CLIP or SigLIP 2 "
                "model, e.g. clip-ViT-B-32)."
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingError(f"text query #{i} is a {type(text).__name__}, not a string")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return _l2_normalise(self._embed_text_batch(list(texts)))

    def describe(self) -> dict[str, Any]:
        """What the UI, the CLI's health and the logs show about the active model."""
        return {
            "model_id": self.model_id,
            "display_name": self.display_name,
            "dim": self.dim,
            "supports_text": self.supports_text,
            "device": self.device,
            "fallback_reason": self.fallback_reason,
            "runtime": self.runtime,
            "runtime_reason": self.runtime_reason,
        }

    def export_onnx(self, runtime: str) -> None:
        """Move this model's networks onto ONNX Runtime in place: export them from torch, check them against it,
        cache them (vpm.models.onnx_runtime.accelerate calls it and keeps torch, with the reason, when it raises).
        `runtime` is "auto", "onnx-fp32" or "onnx-int8". A model with no export of its own stays on torch."""
        raise NotImplementedError(f"no ONNX export for {type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, device={self.device!r})"

    def _prepare_image_batch(self, images: list[Image.Image]) -> Any:
        return images

    @abstractmethod
    def _embed_image_batch(self, images: Any) -> np.ndarray:
        """The raw vectors of what `_prepare_image_batch` made (by default, the RGB images themselves)."""

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        raise EmbeddingError(f"{self.display_name} does not embed text")


def _as_rgb(image: Any, position: int) -> Image.Image:
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise EmbeddingError(f"image #{position} is a {type(image).__name__}, not a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
