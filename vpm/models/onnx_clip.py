"""CLIP's export hook: its towers on ONNX Runtime (see vpm/models/onnx_runtime.py for the cache and the parity bar).

The image tower (pixels -> projected embedding) and the text tower (token ids + mask -> projected embedding) are
each exported from the very `transformers.CLIPModel` the SentenceTransformer loaded. Images are preprocessed by a
numpy/Pillow copy of CLIP's processor when it gives the same pixels as the model's own processor on the probe
images (checked at load), else by that processor; texts by a copy of its tokenizer on the `tokenizers` library
where that gives the model's own tokens (vpm/models/onnx_preprocess.py). The embedder (vpm.models.clip_model) calls
`accelerate_clip` from its `export_onnx`, and starts from the export with `ClipPixels`; this module knows the model
only through the embedder it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vpm.models import onnx_runtime as rt
from vpm.models.onnx_preprocess import Pixels, TextTokens, Towers, needs_torch
from vpm.models.onnx_runtime import OnnxUnavailable

log = logging.getLogger(__name__)

class ClipPixels(Pixels):
    """CLIP's image preprocessing: the numpy/Pillow copy where it reproduces the processor's pixels on the probe
    images, else the SentenceTransformer's own preprocessing."""

    def __init__(self, st_model, fast: dict[str, Any] | None, load_model: Callable[[], Any] | None = None):
        super().__init__(fast)
        self._st_model = st_model
        self._load_model = load_model  # made from a checked export, there is no model until someone asks for it

    @property
    def st_model(self):
        if self._st_model is None and self._load_model is not None:
            self._st_model = self._load_model()
        return self._st_model

    def _slow(self, images: list) -> np.ndarray:
        return np.ascontiguousarray(self.st_model.preprocess(images)["pixel_values"].numpy(), dtype=np.float32)

    @classmethod
    def for_processor(cls, processor, st_model, probes: list) -> ClipPixels:
        try:
            fast = cls(st_model, cls.fast_settings(processor))
        except Exception as err:  # noqa: BLE001 - an unknown processor simply keeps its own code
            log.debug("CLIP's processor is used as it is (%s)", err)
            return cls(st_model, None)
        if fast.reproduces(probes):
            return fast
        log.info("CLIP's processor is used as it is: the fast copy does not reproduce its pixels")
        return cls(st_model, None)


def _clip_parts(st_model) -> tuple[Any, Any]:
    """The transformers CLIPModel and its processor inside a SentenceTransformer, or OnnxUnavailable."""
    modules = list(st_model)
    if len(modules) != 1:
        raise OnnxUnavailable(f"the model has {len(modules)} modules; the ONNX export handles a single CLIP module")
    module = modules[0]
    clip = getattr(module, "auto_model", None) or getattr(module, "model", None)
    processor = getattr(module, "processor", None)
    if clip is None or processor is None or not hasattr(clip, "get_image_features"):
        raise OnnxUnavailable(f"{type(module).__name__} is not a CLIP module the ONNX export knows")
    return clip, processor


def features(output):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the embedding (5)."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


def _tokens(st_model, texts: list[str]) -> dict[str, np.ndarray]:
    features_ = st_model.preprocess(texts)
    return {name: np.ascontiguousarray(features_[name].numpy().astype(np.int64))
            for name in ("input_ids", "attention_mask")}


def _text_tokens(st_model, processor, folder: Path) -> TextTokens | None:
    """The copy of CLIP's tokenizer, saved in `folder`, when it reproduces the model's tokens; else None."""
    tokenizer = getattr(processor, "tokenizer", None)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        log.debug("no fast tokenizer to copy (%s)", type(tokenizer).__name__)
        return None
    module = next(iter(st_model))
    settings = {
        "max_length": int(getattr(module, "max_seq_length", None) or tokenizer.model_max_length),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
    }
    return TextTokens.copy_of(tokenizer, settings, lambda texts: _tokens(st_model, texts), folder)


def accelerate_clip(embedder, runtime: str) -> None:
    import torch

    st_model = embedder._model
    clip, processor = _clip_parts(st_model)
    model_id = embedder.model_id
    files_root = embedder.model_folder()
    folder = rt.cache_root() / rt.cache_key(model_id, embedder.model_files_digest())
    quantize = runtime in ("auto", "onnx-int8")

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return features(self.clip.get_image_features(pixel_values=pixel_values))

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids, attention_mask):
            return features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    images = rt.probe_images()
    image_processor = getattr(processor, "image_processor", processor)
    pixels = ClipPixels.for_processor(image_processor, st_model, images)
    pixel_probes = {"pixel_values": pixels(images)}

    def encode(inputs):
        return np.asarray(st_model.encode(inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)

    image_net = rt.load_network(
        folder, "image", quantize=quantize, wanted=runtime, probes=pixel_probes,
        reference=lambda _probes: encode(images),
        export=lambda path: rt._torch_export(ImageTower().eval(), (torch.from_numpy(pixel_probes["pixel_values"][:2]),),
                                             path, ["pixel_values"], {"pixel_values": {0: "batch"}}),
    )
    networks = [image_net]
    text_net = None
    text_tokens: TextTokens | None = None
    if embedder.supports_text:
        tokens = _tokens(st_model, list(rt.PROBE_TEXTS))
        text_net = rt.load_network(
            folder, "text", quantize=quantize, wanted=runtime, probes=tokens,
            reference=lambda _probes: encode(list(rt.PROBE_TEXTS)),
            export=lambda path: rt._torch_export(
                TextTower().eval(), (torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])),
                path, ["input_ids", "attention_mask"],
                {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
            ),
        )
        networks.append(text_net)
        text_tokens = _text_tokens(st_model, processor, folder)
    why_torch = needs_torch(pixels, embedder.supports_text, text_tokens)
    rt.record_model(folder, {
        "kind": "clip", "id": model_id, "digest": embedder.model_files_digest(), "dim": embedder.dim,
        "supports_text": embedder.supports_text, "pixels": pixels.settings_json(),
        "tokenizer": text_tokens.settings if text_tokens is not None else None, "needs_torch": why_torch,
    }, files_root, rt.model_file_names(files_root))
    if why_torch:
        log.info("Embedding model %s will load through torch at each start: %s", model_id, why_torch)
    rt._suffix_if_below_bar(embedder, networks)
    tokenize = text_tokens if text_tokens is not None else (lambda texts: _tokens(st_model, texts))
    embedder.use_onnx(Towers(pixels, image_net, text_net, tokenize))

