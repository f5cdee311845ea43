"""DINOv2 and SigLIP 2 through transformers: image models to compare with CLIP on a catalog, and SigLIP's words.

VPM_MODEL may name one of these checkpoints (a hub name such as `facebook/dinov2-small` or
`google/siglip2-base-patch16-224`, or a local folder). Where its files come from follows vpm.models.embeddings' rules
(a local folder, else the Hugging Face cache, else a download when the hub answers, else the built-in model with the
reason); which family it is comes from its config.json's `model_type`, read without importing torch:

- `dinov2` (and `dinov2_with_registers`): images only (`supports_text` False, so search by words is hidden). The
  vector is the CLS token after the final layer norm (transformers' `pooler_output`), L2-normalised. Not CLS +
  mean-pooled patches: that concatenation is the input of DINOv2's linear classification probes (twice the width,
  for a classifier); its paper's instance retrieval and k-NN evaluations use the class token, which is the
  retrieval recipe and half the storage. The image goes through the checkpoint's own processor (short side to 256,
  centre crop 224, ImageNet mean and std).
- `siglip`: SigLIP and the fixed-resolution SigLIP 2 checkpoints (they ship as `model_type` siglip). Images and
  words: the image tower's attention-pooled output and the text tower's, in one space. Texts are padded to the
  text tower's length (64 tokens), as the model was trained, and SigLIP 2's are lower-cased first: its paper
  lower-cases every text before the Gemma tokenizer, but its checkpoints name a `GemmaTokenizer`, which does not.
- `siglip2` (the NaFlex checkpoints, with a variable patch grid) is not supported: it falls back with the reason.

Each runs on ONNX Runtime where its export matches torch (vpm/models/onnx_hf.py, the embedder's `export_onnx`), and starts
from that checked export without torch afterwards (`TransformersEmbedder.from_export`), like CLIP.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vpm.models import onnx_hf
from vpm.models import onnx_runtime as rt
from vpm.models.embedder_base import Embedder
from vpm.models.model_files import ModelSource, ModelUnavailable, files_digest
from vpm.models.onnx_preprocess import Pixels, TextTokens, Towers

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    label: str  # for people
    reads_words: bool


FAMILIES = {
    "dinov2": Family("dinov2", "DINOv2", False),
    "dinov2_with_registers": Family("dinov2_with_registers", "DINOv2 with registers", False),
    "siglip": Family("siglip", "SigLIP 2", True),
}
# Hub names that are worth a look at their config before sentence-transformers is asked (a download decides).
_NAME_HINTS = ("dinov2", "siglip")
# What a download of one of these checkpoints needs (not the other frameworks' weights a repository also holds).
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
TEXT_BATCH = 64


class Unsupported(Exception):
    """A checkpoint of a family this module knows it cannot run; the message says why and what to use."""


def family_of(folder: Path) -> Family | None:
    """The family of the checkpoint in `folder` from its config.json, without torch; None when it is not one of
    these (sentence-transformers loads it then: CLIP, or a sentence-transformers folder with its modules.json)."""
    if (folder / "modules.json").is_file():
        return None
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    if model_type == "siglip2":
        raise Unsupported(
            "it is a SigLIP 2 NaFlex checkpoint (variable patch grid), which is not supported here; use a fixed-"
            "resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224"
        )
    return FAMILIES.get(str(model_type))


def hinted(name: str) -> bool:
    """Whether a hub name looks like one of these families (its config is fetched before anything else)."""
    return "/" in name and any(hint in name.lower() for hint in _NAME_HINTS)


def download(repo_id: str, cache_dir: Path) -> Path | None:
    """The snapshot folder of `repo_id` downloaded into `cache_dir` when its config says it is one of these
    families; None when it is not (sentence-transformers downloads it then). Raises what huggingface_hub raises."""
    from huggingface_hub import hf_hub_download, snapshot_download

    config = Path(hf_hub_download(repo_id, "config.json", cache_dir=str(cache_dir)))
    if family_of(config.parent) is None:
        return None
    return Path(snapshot_download(repo_id, cache_dir=str(cache_dir), allow_patterns=_DOWNLOAD_PATTERNS))


class HfParts:
    """A checkpoint on torch: the transformers model, its image processor and (SigLIP) its tokenizer."""

    def __init__(self, folder: Path, family: Family, device: str):
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor

        self.family = family
        self.device = device
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval().to(device)
        self.tokenizer = None
        if family.reads_words:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
            self.image_processor = getattr(processor, "image_processor", processor)
            self.tokenizer = getattr(processor, "tokenizer", None)
            if self.tokenizer is None:
                raise ValueError("its processor has no tokenizer")
        else:
            self.image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        config = self.model.config
        text_config = getattr(config, "text_config", None)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 64) or 64)
        # SigLIP 2 was trained on lower-cased text; its checkpoints name a Gemma tokenizer that does not lower-case.
        self.lowercase = self.tokenizer is not None and "gemma" in type(self.tokenizer).__name__.lower()
        vision = getattr(config, "vision_config", config)
        self.dim = int(vision.hidden_size)

    def pixels(self, images: list) -> np.ndarray:
        """The processor's own pixels for these RGB images, float32 NCHW."""
        values = self.image_processor(images=list(images), return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(values, dtype=np.float32)

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The tokenizer's ids (and mask, where it gives one), padded to the text tower's length as in training."""
        if self.lowercase:
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="np")
        return {k: np.ascontiguousarray(np.asarray(encoded[k]).astype(np.int64))
                for k in ("input_ids", "attention_mask") if k in encoded}

    def image_features(self, pixel_values):
        """torch: pixels -> the image vector (not yet normalised)."""
        if not self.family.reads_words:  # DINOv2: the CLS token after the last layer norm
            return self.model(pixel_values=pixel_values).pooler_output
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    def text_features(self, **tokens):
        return _pooled(self.model.get_text_features(**tokens))


def _pooled(output):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the embedding (5)."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


class TransformersEmbedder(Embedder):
    """A DINOv2 or SigLIP checkpoint through transformers (torch), or its checked ONNX export.

    Made from the export (vpm.models.onnx_hf) it holds no torch model at all: `dim` and `supports_text` come from the
    export's manifest, and `load_parts` loads the checkpoint on torch only if something asks for `parts`."""

    def __init__(self, parts: HfParts | None, family: Family, model_id: str, display_name: str, device: str,
                 folder: Path, *, dim: int | None = None, load_parts: Callable[[], HfParts] | None = None) -> None:
        self._parts = parts
        self._load_parts = load_parts
        self._parts_lock = threading.Lock()
        self._folder = folder
        self._onnx: Any = None  # vpm.models.onnx_preprocess.Towers once the towers run on ONNX Runtime
        self.family = family
        self.model_id = model_id
        self.display_name = display_name
        self.device = device
        self.fallback_reason = None
        self.supports_text = family.reads_words
        if parts is None and (dim is None or load_parts is None):
            raise ValueError("an embedder without its model needs dim and load_parts")
        self.dim = int(dim if parts is None else parts.dim)

    @property
    def parts(self) -> HfParts:
        """The checkpoint on torch (loaded now if this embedder was made from its ONNX export)."""
        if self._parts is None:
            with self._parts_lock:
                if self._parts is None:
                    assert self._load_parts is not None
                    self._parts = self._load_parts()
        return self._parts

    @classmethod
    def from_export(cls, source: ModelSource, folder: Path, manifest: dict[str, Any], runtime: str
                    ) -> TransformersEmbedder | None:
        """A DINOv2 or SigLIP embedder from its checked export alone (no torch, no transformers), or None where a
        network it needs is not in the cache as `runtime` wants it."""
        model = manifest["model"]
        family = FAMILIES.get(str(model.get("family")))
        if family is None or bool(model["supports_text"]) != family.reads_words:
            return None
        quantize = runtime in ("auto", "onnx-int8")
        image = rt.cached_network(folder, manifest, "image", quantize, runtime)
        text = rt.cached_network(folder, manifest, "text", quantize, runtime) if family.reads_words else None
        if image is None or (family.reads_words and text is None):
            return None
        tokens = TextTokens(folder / TextTokens.FILE, model["tokenizer"]) if family.reads_words else None
        embedder = cls(
            None, family, source.model_id, source.display_name, "cpu", source.folder, dim=int(model["dim"]),
            load_parts=lambda: load_parts(source, family, "cpu"),  # only if something asks for the torch model
        )
        pixels = onnx_hf.HfPixels(embedder, Pixels.settings_from_json(model["pixels"]))
        rt._suffix_if_below_bar(embedder, [n for n in (image, text) if n is not None])
        embedder.use_onnx(Towers(pixels, image, text, tokens))
        return embedder

    def export_onnx(self, runtime: str) -> None:
        onnx_hf.accelerate_hf(self, runtime)

    def model_folder(self) -> Path:
        return self._folder.resolve()

    def model_files_digest(self) -> str:
        return files_digest(self.model_folder())

    def use_onnx(self, towers: Any) -> None:
        self._onnx = towers
        self.runtime, self.runtime_reason = towers.runtime, None

    def _prepare_image_batch(self, images: list[Image.Image]) -> np.ndarray:
        from vpm.core.images import crop_to_aspect

        # The processors scale the photo to their input before any crop: cut to MAX_ASPECT_RATIO first, so that
        # step stays small whatever the photo's shape (every decoded upload passes untouched).
        bounded = [crop_to_aspect(image) for image in images]
        return self._onnx.prepare_images(bounded) if self._onnx is not None else self.parts.pixels(bounded)

    def _embed_image_batch(self, pixels: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx.embed_pixels(pixels)
        import torch

        with torch.inference_mode():
            out = self.parts.image_features(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device))
        return out.float().cpu().numpy()

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        chunks = [texts[i : i + TEXT_BATCH] for i in range(0, len(texts), TEXT_BATCH)]
        if self._onnx is not None and self._onnx.text is not None:
            return np.concatenate([self._onnx.embed_texts(chunk) for chunk in chunks])
        import torch

        out = []
        for chunk in chunks:
            tokens = {k: torch.from_numpy(v).to(self.device) for k, v in self.parts.tokens(chunk).items()}
            with torch.inference_mode():
                out.append(self.parts.text_features(**tokens).float().cpu().numpy())
        return np.concatenate(out)


def load_parts(source: ModelSource, family: Family, device: str) -> HfParts:
    """The checkpoint on torch; anything that fails is the fallback's reason (ModelUnavailable)."""
    assert source.folder is not None
    rt.configure_torch_threads()
    try:
        return HfParts(source.folder, family, device)
    except Exception as err:  # whatever transformers raises, the app must keep running on the fallback
        first_line = (str(err).strip().splitlines() or [""])[0][:300].rstrip(". ")
        problem = (f"the folder {source.folder} does not hold a usable {family.label} model" if source.repo_id is None
                   else f"{source.name!r} could not be loaded as a {family.label} model")
        raise ModelUnavailable(f"{problem} ({type(err).__name__}: {first_line})") from err


def load(source: ModelSource, family: Family, device: str) -> TransformersEmbedder:
    """The embedder of a located checkpoint of `family`, on torch (vpm.models.onnx_runtime.accelerate moves it)."""
    assert source.folder is not None
    parts = load_parts(source, family, device)
    return TransformersEmbedder(parts, family, source.model_id, source.display_name, device, source.folder)
