"""CLIP (and any sentence-transformers model that embeds images): the embedder, its default cosines, and its ONNX
export (vpm/models/onnx_clip.py) and start from that export.

vpm.models.embeddings decides where the files come from and loads them with `construct`; torch, transformers and
sentence-transformers are imported only there, never at this module's import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.models import onnx_clip
from vpm.models import onnx_runtime as rt
from vpm.models.embedder_base import Embedder, Thresholds
from vpm.models.model_files import ModelSource, ModelUnavailable, files_digest
from vpm.models.onnx_preprocess import Pixels, TextTokens, Towers

if TYPE_CHECKING:
    from PIL import Image

# CLIP's image-image cosine for two photos of one product is typically 0.8-0.95, a matching text-image pair 0.25-0.35.
CLIP_THRESHOLDS = Thresholds(image=0.75, text=0.22)
TEXT_BATCH = 64


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model that embeds images (CLIP and the like).

    Loaded from a checked ONNX export (`from_export`) it holds no torch model at all: `model` is None, `dim` and
    `supports_text` come from the export's manifest, and `load_model` makes the SentenceTransformer only if
    something asks for `_model` (torch then, never for embedding)."""

    def __init__(
        self, model: Any, model_id: str, display_name: str, device: str, folder: Path | None = None, *,
        dim: int | None = None, supports_text: bool | None = None, load_model: Callable[[], Any] | None = None,
    ) -> None:
        self._st_model = model
        self._load_model = load_model
        self._model_lock = threading.Lock()
        self._folder = folder  # where its files are (the ONNX cache is keyed by their hashes)
        self._onnx: Any = None  # vpm.models.onnx_preprocess.Towers once the towers run on ONNX Runtime
        self.model_id = model_id
        self.display_name = display_name
        self.device = device
        self.fallback_reason = None
        if model is None:
            if dim is None or supports_text is None or load_model is None:
                raise ValueError("an embedder without its model needs dim, supports_text and load_model")
            self.supports_text, self.dim = supports_text, dim
            return
        self.supports_text = bool(model.supports("text"))
        # sentence-transformers 6 renamed get_sentence_embedding_dimension; some models report None.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or self._probe_dim())

    @property
    def thresholds(self) -> Thresholds:
        """CLIP's own cosines; a sentence-transformers model of another family keeps the contract's defaults."""
        return CLIP_THRESHOLDS if "clip" in self.model_id.lower() else Thresholds()

    @classmethod
    def from_export(cls, source: ModelSource, folder: Path, manifest: dict[str, Any], runtime: str
                    ) -> SentenceTransformerEmbedder | None:
        """The embedder from its checked export alone (no torch, transformers or sentence-transformers), or None
        where a network it needs is not in the cache as `runtime` wants it."""
        model = manifest["model"]
        quantize = runtime in ("auto", "onnx-int8")
        supports_text = bool(model["supports_text"])
        image = rt.cached_network(folder, manifest, "image", quantize, runtime)
        text = rt.cached_network(folder, manifest, "text", quantize, runtime) if supports_text else None
        if image is None or (supports_text and text is None):
            return None
        tokens = TextTokens(folder / TextTokens.FILE, model["tokenizer"]) if supports_text else None

        def load_model():  # only if something asks for the torch model itself (nothing that embeds does)
            rt.configure_torch_threads()
            return construct(source.name, str(source.folder), "cpu")

        embedder = cls(None, source.model_id, source.display_name, "cpu", source.folder, dim=int(model["dim"]),
                       supports_text=supports_text, load_model=load_model)
        pixels = onnx_clip.ClipPixels(None, Pixels.settings_from_json(model["pixels"]),
                                      load_model=lambda: embedder._model)
        rt._suffix_if_below_bar(embedder, [n for n in (image, text) if n is not None])
        embedder.use_onnx(Towers(pixels, image, text, tokens))
        return embedder

    def export_onnx(self, runtime: str) -> None:
        onnx_clip.accelerate_clip(self, runtime)

    @property
    def _model(self) -> Any:
        """The SentenceTransformer (made now, with torch, if this embedder was loaded from its ONNX export)."""
        if self._st_model is None:
            with self._model_lock:
                if self._st_model is None:
                    assert self._load_model is not None
                    self._st_model = self._load_model()
        return self._st_model

    def _probe_dim(self) -> int:
        from PIL import Image

        return int(self._encode([Image.new("RGB", (32, 32))], batch_size=1).shape[1])

    def _encode(self, inputs: list[Any], batch_size: int) -> np.ndarray:
        vectors = self._model.encode(
            inputs, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def model_folder(self) -> Path:
        """The folder of the model's files, resolved (OnnxUnavailable when there is none on this machine)."""
        if self._folder is None or not self._folder.is_dir():
            raise rt.OnnxUnavailable("the model's files are not in a folder on this machine")
        return self._folder.resolve()

    def model_files_digest(self) -> str:
        return files_digest(self.model_folder())

    def use_onnx(self, towers: Any) -> None:
        self._onnx = towers
        self.runtime, self.runtime_reason = towers.runtime, None

    def _prepare_image_batch(self, images: list[Image.Image]) -> Any:
        from vpm.core.images import crop_to_aspect

        # CLIP's processor scales the short side up to its input size before its centre crop: a 1×200000 strip
        # would become a 30 GB image. Cropped to MAX_ASPECT_RATIO first, that step stays small; every image
        # decode_image accepts is passed on untouched, so its vector is exactly what it was.
        bounded = [crop_to_aspect(image) for image in images]
        return self._onnx.prepare_images(bounded) if self._onnx is not None else bounded

    def _embed_image_batch(self, images: Any) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx.embed_pixels(images)
        return self._encode(images, batch_size=len(images))  # embed_images already made the batch

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        if self._onnx is not None and self._onnx.text is not None:
            return np.concatenate([self._onnx.embed_texts(texts[i : i + TEXT_BATCH])
                                   for i in range(0, len(texts), TEXT_BATCH)])
        return self._encode(texts, batch_size=TEXT_BATCH)


def construct(name: str, source: str, device: str, what: str | None = None, **kwargs: Any) -> Any:
    """The SentenceTransformer at `source` (a folder or a hub repo) on torch; ModelUnavailable, with the loader's
    own reason, when it cannot be loaded."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device=device, **kwargs)
    except Exception as err:  # whatever the loader raises, the app must keep running on the fallback
        first_line = (str(err).strip().splitlines() or [""])[0][:300].rstrip(". ")
        problem = what or f"{name!r} could not be loaded"
        raise ModelUnavailable(f"{problem} ({type(err).__name__}: {first_line})") from err
