"""What runs before the network on ONNX Runtime, without torch or transformers: the tokenizer and the image processor.

- `TextTokens`: a model's own fast tokenizer (its tokenizer.json) on the `tokenizers` library, with its truncation
  and padding (to the longest text, or to a fixed length as SigLIP was trained), lower-casing first where the model
  was trained on lower-cased text. Used only where it gave the model's own token ids and masks on TOKENIZER_CHECKS.
- `Pixels`: a numpy/Pillow copy of a transformers image processor (resize the short side then centre-crop, as CLIP
  and DINOv2 do, or resize to a fixed size, as SigLIP does; then scale and normalise). Used only where it gives the
  processor's own pixels on the probe images (checked when the export is made); otherwise the processor itself.
- `Towers`: an embedder's exported networks with their preprocessing, what it calls instead of torch.

A copy that passed its check is recorded in the export's manifest, so a start from the cache uses it directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vpm.models.onnx_runtime import PROBE_TEXTS, Network, OnnxUnavailable, _first_line

log = logging.getLogger(__name__)

# Texts the copy of the tokenizer must turn into exactly the model's token ids (one batch, and each alone): the
# probes, an empty and a one-letter query, case, spacing, accents, emoji, ligatures, and two past the length limit.
TOKENIZER_CHECKS = (
    *PROBE_TEXTS, "", "x", "  Mixed   CASE\twith\nbreaks  ", "Crème brûlée, jalapeño & Weißbier 😀 ½ ﬁ 42%",
    "organic bananas " * 40, "a" * 300,
)
TOKEN_INPUTS = ("input_ids", "attention_mask")
# Image processors whose steps Pixels copies (with or without transformers 5's "Pil" suffix); anything else keeps
# its own code. The copy is still checked against the processor on the probes before it is used.
_COPIED_PROCESSORS = ("CLIPImageProcessor", "BitImageProcessor", "SiglipImageProcessor")

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


class TextTokens:
    """A model's tokenizer on the `tokenizers` library alone (no transformers, no torch): the tokenizer.json of the
    model's own (fast) tokenizer, saved beside its export, with its truncation and padding. Used only where it gave
    the model's own token ids and attention masks on TOKENIZER_CHECKS (checked when the export is made).

    settings: max_length, truncation_side, padding_side, pad_id, pad_token; optional `length` (pad every text to
    this many tokens) and `lowercase` (lower-case the text first)."""

    FILE = "tokenizer.json"

    def __init__(self, path: Path, settings: dict[str, Any]):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=int(settings["max_length"]), direction=settings["truncation_side"])
        padding = {"length": int(settings["length"])} if settings.get("length") else {}
        tokenizer.enable_padding(direction=settings["padding_side"], pad_id=int(settings["pad_id"]),
                                 pad_token=settings["pad_token"], **padding)
        self.tokenizer = tokenizer
        self.settings = settings

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.settings.get("lowercase"):
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}

    @classmethod
    def copy_of(cls, tokenizer, settings: dict[str, Any], reference: Tokenize, folder: Path) -> TextTokens | None:
        """The copy of `tokenizer` (a transformers tokenizer), saved in `folder`, when it gives what `reference`
        (the model's own tokenization) gives on TOKENIZER_CHECKS, key for key; else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            log.debug("no fast tokenizer to copy (%s)", type(tokenizer).__name__)
            return None
        settings = {"file": cls.FILE, **settings}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tokenizer-")
        os.close(fd)
        try:
            backend.save(tmp)
            copy = cls(Path(tmp), settings)
            batches = [list(TOKENIZER_CHECKS)] + [[text] for text in TOKENIZER_CHECKS]
            for texts in batches:
                mine, theirs = copy(texts), reference(texts)
                if any(not np.array_equal(mine[k], theirs[k]) for k in theirs):
                    log.info("the copy of %s's tokenizer gives other tokens for %r: it stays on transformers",
                             type(tokenizer).__name__, texts[0][:40])
                    return None
            os.replace(tmp, folder / cls.FILE)
        except Exception as err:  # noqa: BLE001 - the model's own tokenizer keeps working
            log.info("the tokenizer could not be copied (%s: %s): it stays on transformers", type(err).__name__,
                     _first_line(err))
            return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return cls(folder / cls.FILE, settings)


class Pixels:
    """An image processor's steps in numpy and Pillow (`fast`), or the processor itself (`_slow`) where the copy
    does not reproduce its pixels (slower: ~5 ms an image more on this machine)."""

    def __init__(self, fast: dict[str, Any] | None):
        self.fast = fast

    def _slow(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def settings_json(self) -> dict[str, Any] | None:
        """The fast copy's settings as a manifest keeps them (None: the model's own processor is used)."""
        if self.fast is None:
            return None
        f = self.fast
        return {"short": f["short"], "size": list(f["size"]) if f.get("size") else None,
                "crop": list(f["crop"]) if f.get("crop") else None, "resample": f["resample"],
                "gain": [float(v) for v in f["gain"].ravel()], "offset": [float(v) for v in f["offset"].ravel()]}

    @staticmethod
    def settings_from_json(data: dict[str, Any]) -> dict[str, Any]:
        def pair(value) -> tuple[int, int] | None:
            return (int(value[0]), int(value[1])) if value else None

        return {"short": int(data["short"]) if data.get("short") else None, "size": pair(data.get("size")),
                "crop": pair(data.get("crop")), "resample": int(data["resample"]),
                "gain": np.asarray(data["gain"], dtype=np.float32).reshape(3, 1, 1),
                "offset": np.asarray(data["offset"], dtype=np.float32).reshape(3, 1, 1)}

    def reproduces(self, probes: list) -> bool:
        """Whether the fast copy gives the processor's own pixels on `probes` (any failure: no)."""
        if self.fast is None:
            return False
        try:
            return bool(np.abs(self(probes) - self._slow(probes)).max() <= 1e-4)
        except Exception as err:  # noqa: BLE001 - an unknown processor simply keeps its own code
            log.debug("the image processor is used as it is (%s)", err)
            return False

    @staticmethod
    def fast_settings(processor) -> dict[str, Any]:
        """The steps of a processor Pixels can copy, or ValueError."""
        name = type(processor).__name__
        if not name.startswith(_COPIED_PROCESSORS):
            raise ValueError(f"not a processor this copy knows ({name})")

        def get(attribute):
            return getattr(processor, attribute, None)

        if not (get("do_resize") and get("do_rescale") and get("do_normalize")) or get("do_pad"):
            raise ValueError("a processor that skips a step, or pads")
        # A plain dict in older transformers, a SizeDict (iterates as key/value pairs) in newer ones.
        size = dict(get("size"))
        given = {k for k, v in size.items() if v}
        short = fixed = crop = None
        if given == {"shortest_edge"}:
            short = int(size["shortest_edge"])
        elif given == {"height", "width"}:
            fixed = (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"size {size}")
        if get("do_center_crop"):
            crop_size = dict(get("crop_size"))
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        elif short is not None:
            raise ValueError("a short-side resize without a crop makes batches of mixed sizes")
        scale = float(get("rescale_factor"))
        mean = np.asarray(get("image_mean"), dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(get("image_std"), dtype=np.float32).reshape(3, 1, 1)
        return {"short": short, "size": fixed, "crop": crop, "resample": int(get("resample")),
                "gain": (scale / std).astype(np.float32), "offset": (-mean / std).astype(np.float32)}

    def __call__(self, images: list) -> np.ndarray:
        if self.fast is None:
            return self._slow(images)
        return np.stack([self._one(image) for image in images])

    def _one(self, image) -> np.ndarray:
        f = self.fast
        if f.get("size"):
            height, width = f["size"]
            size = (width, height)
        else:
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = f["short"], int(f["short"] * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, f["resample"])
        array = np.asarray(image)  # uint8, h x w x 3: cropped before it becomes floats (less to convert)
        if f.get("crop"):
            crop_h, crop_w = f["crop"]
            h, w = array.shape[:2]
            if h < crop_h or w < crop_w:
                raise ValueError("an image smaller than the crop")  # the processor pads; not copied here
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
            array = array[top : top + crop_h, left : left + crop_w]
        return array.transpose(2, 0, 1) * f["gain"] + f["offset"]  # (x * scale - mean) / std in one pass


class Towers:
    """An embedder's networks on ONNX Runtime, with their preprocessing: what it calls instead of torch.

    `tokenize(texts)` gives the text tower's inputs: TextTokens where it reproduces the model's tokenizer, else the
    model's own tokenization (transformers)."""

    def __init__(self, pixels: Pixels, image: Network, text: Network | None, tokenize: Tokenize | None):
        self.pixels = pixels
        self.image = image
        self.text = text
        self.tokenize = tokenize
        self.runtime = image.runtime if text is None or text.variant == image.variant else (
            f"onnx-{image.variant}/{text.variant}")

    def prepare_images(self, images: list) -> np.ndarray:
        return self.pixels(images)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(pixel_values=np.ascontiguousarray(pixels, dtype=np.float32))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.text is None or self.tokenize is None:
            raise OnnxUnavailable("no text tower")
        return self.text.run(**self.tokenize(texts))


def needs_torch(pixels: Pixels, supports_text: bool, tokens: TextTokens | None) -> str | None:
    """Why a start from the export would still need torch (the manifest records it), or None."""
    if pixels.fast is None:
        return "its image processor is not one the numpy copy reproduces"
    if supports_text and tokens is None:
        return "its tokenizer could not be reproduced without transformers"
    return None
