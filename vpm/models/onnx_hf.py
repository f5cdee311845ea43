"""DINOv2 and SigLIP 2's export hook (vpm/models/hf_models.py) on ONNX Runtime (see vpm/models/onnx_runtime.py for the cache).

The image tower (pixels -> the image vector: DINOv2's CLS token, SigLIP's pooled output) and SigLIP's text tower
(token ids and mask -> the text vector) are exported from the checkpoint transformers loaded, and each is checked
against torch on the probes: the images go through the checkpoint's own processor into torch, and through the numpy
copy of it into the graph, so the check covers the copy too. The export's manifest records the family, the vector
size, the preprocessing and the tokenizer, so a later start needs no torch (`TransformersEmbedder.from_export`).
This module knows the model only through the embedder it is handed (`accelerate_hf`, called by its `export_onnx`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vpm.models import onnx_runtime as rt
from vpm.models.onnx_preprocess import Pixels, TextTokens, Towers, needs_torch

log = logging.getLogger(__name__)


class HfPixels(Pixels):
    """The checkpoint's image processor: the numpy/Pillow copy where it reproduces the processor's pixels on the
    probes, else the processor itself (loaded with the checkpoint, when the embedder was made from its export)."""

    def __init__(self, embedder, fast: dict[str, Any] | None):  # embedder: a vpm.models.hf_models.TransformersEmbedder
        super().__init__(fast)
        self._embedder = embedder

    def _slow(self, images: list) -> np.ndarray:
        return self._embedder.parts.pixels(images)

    @classmethod
    def for_embedder(cls, embedder, probes: list) -> HfPixels:
        try:
            fast = cls(embedder, cls.fast_settings(embedder.parts.image_processor))
        except Exception as err:  # noqa: BLE001 - an unknown processor simply keeps its own code
            log.debug("the image processor of %s is used as it is (%s)", embedder.model_id, err)
            return cls(embedder, None)
        if fast.reproduces(probes):
            return fast
        log.info("the image processor of %s is used as it is: the copy does not reproduce its pixels", embedder.model_id)
        return cls(embedder, None)


def _text_tokens(parts, folder: Path) -> TextTokens | None:  # parts: a vpm.models.hf_models.HfParts
    tokenizer = parts.tokenizer
    settings = {
        "max_length": parts.max_length, "length": parts.max_length, "lowercase": parts.lowercase,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
    }
    return TextTokens.copy_of(tokenizer, settings, parts.tokens, folder)


def accelerate_hf(embedder, runtime: str) -> None:
    import torch

    parts = embedder.parts
    model_id = embedder.model_id
    files_root = embedder.model_folder()
    folder = rt.cache_root() / rt.cache_key(model_id, embedder.model_files_digest())
    quantize = runtime in ("auto", "onnx-int8")

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = parts.model

        def forward(self, pixel_values):
            return parts.image_features(pixel_values)

    images = rt.probe_images()
    pixels = HfPixels.for_embedder(embedder, images)
    pixel_probes = {"pixel_values": pixels(images)}

    def torch_images(_probes) -> np.ndarray:
        with torch.inference_mode():
            return parts.image_features(torch.from_numpy(parts.pixels(images))).float().numpy()

    image_net = rt.load_network(
        folder, "image", quantize=quantize, wanted=runtime, probes=pixel_probes, reference=torch_images,
        export=lambda path: rt._torch_export(ImageTower().eval(), (torch.from_numpy(pixel_probes["pixel_values"][:2]),),
                                             path, ["pixel_values"], {"pixel_values": {0: "batch"}}),
    )
    networks = [image_net]
    text_net = None
    text_tokens: TextTokens | None = None
    if embedder.supports_text:
        tokens = parts.tokens(list(rt.PROBE_TEXTS))
        names = list(tokens)

        class TextTower(torch.nn.Module):  # SigLIP 2's Gemma tokenizer gives a mask; SigLIP's own gives ids alone
            def __init__(self):
                super().__init__()
                self.model = parts.model

            def forward(self, input_ids, attention_mask=None):
                masked = {"attention_mask": attention_mask} if attention_mask is not None else {}
                return parts.text_features(input_ids=input_ids, **masked)

        def torch_texts(_probes) -> np.ndarray:
            with torch.inference_mode():
                return parts.text_features(**{k: torch.from_numpy(v) for k, v in tokens.items()}).float().numpy()

        text_net = rt.load_network(
            folder, "text", quantize=quantize, wanted=runtime, probes=tokens, reference=torch_texts,
            export=lambda path: rt._torch_export(
                TextTower().eval(), tuple(torch.from_numpy(tokens[k]) for k in names), path, names,
                {k: {0: "batch", 1: "tokens"} for k in names},
            ),
        )
        networks.append(text_net)
        text_tokens = _text_tokens(parts, folder)
    why_torch = needs_torch(pixels, embedder.supports_text, text_tokens)
    rt.record_model(folder, {
        "kind": "hf", "family": embedder.family.name, "id": model_id, "digest": embedder.model_files_digest(),
        "dim": embedder.dim, "supports_text": embedder.supports_text, "pixels": pixels.settings_json(),
        "tokenizer": text_tokens.settings if text_tokens is not None else None, "needs_torch": why_torch,
    }, files_root, rt.model_file_names(files_root))
    if why_torch:
        log.info("Embedding model %s will load through torch at each start: %s", model_id, why_torch)
    rt._suffix_if_below_bar(embedder, networks)
    tokenize = text_tokens if text_tokens is not None else (parts.tokens if embedder.supports_text else None)
    embedder.use_onnx(Towers(pixels, image_net, text_net, tokenize))

