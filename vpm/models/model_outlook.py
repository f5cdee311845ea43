"""Which model will run, decided without loading it and without waiting: for Home, the sidebar, and counting
the vectors that matter (health, consistency) before the first search.

vpm.models.embeddings loads VPM_MODEL on the first search, or falls back to the built-in image-only model when it cannot
(no cached copy and no way to download one). This module predicts that outcome the same way, cheaply:
- a model that is loaded already is what runs;
- `efficientnet-lite0`, or a local folder that exists: known at once;
- a hub name: the local Hugging Face cache is looked at directly (a few file checks, no import of
  huggingface_hub); when the model is not cached, HF_HUB_OFFLINE means the fallback, and otherwise one TCP
  connect to the hub runs in a background thread (`start_hub_probe`) while the app says "checking".

Every line here is for people: it names the models, never a path, never an exception's text.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vpm.models.embeddings import DEFAULT_DESCRIPTOR, DEFAULT_MODEL, FALLBACK_MODEL, model_slug

if TYPE_CHECKING:
    from vpm.core.config import Settings
    from vpm.core.matcher import Matcher
    from vpm.models.embeddings import Embedder

State = Literal["loaded", "ready", "download", "fallback", "checking"]
FALLBACK_NAME = "the built-in image model (EfficientNet-Lite0)"
BUILT_IN_SHORT = "EfficientNet-Lite0 (built-in)"  # the sidebar's name for it, before and after it loads
# The id the built-in model's vectors carry: its name plus its descriptor ("efficientnet-lite0-rmac384"), the id the
# loaded embedder reports (EfficientNetEmbedder.model_id), so counting before the load finds the vectors it wrote.
BUILT_IN_ID = DEFAULT_DESCRIPTOR.model_id
PROBE_TTL_S = 600.0  # a hub answer is trusted this long before it is asked again
_ST_ORG = "sentence-transformers"


@dataclass(frozen=True)
class ModelOutlook:
    state: State
    model_id: str  # the id of the model that will run: whose vectors count
    words: bool  # whether search by words will work
    line: str  # one friendly sentence for people
    name: str = ""  # the model in a few words ("EfficientNet-Lite0 (built-in)", "clip-ViT-B-32"), never a path

    @property
    def fallback(self) -> bool:
        """Whether the built-in model runs (with any of its descriptors; the first one's id is the bare name)."""
        return is_built_in(self.model_id)

    @property
    def summary(self) -> str:
        """The sidebar's line: the model, what it searches by, and what the first search costs. The built-in model
        reads the same before and after it loads ("EfficientNet-Lite0 (built-in) · photos only · no download
        needed"): its loaded name carries the descriptor's details (px, pooling), which mean nothing to a user."""
        name = BUILT_IN_SHORT if self.fallback else (self.name or self.model_id)
        ways = "" if self.words else " · photos only"
        if self.fallback:
            when = " · no download needed"
        else:
            when = {"loaded": "", "ready": " · loads on first search", "download": " · downloads on first search",
                    "fallback": " · no download needed", "checking": " · checking…"}[self.state]
        return f"{name}{ways}{when}"


def is_built_in(model_id: str) -> bool:
    """Whether vectors of `model_id` come from the built-in model (any of its descriptors)."""
    return model_id == FALLBACK_MODEL or model_id.startswith(f"{FALLBACK_MODEL}-")


# ------------------------------------------------------------------------------------------- hub probe

_probe_lock = threading.Lock()
_probe: dict[str, object] = {}  # "result": None (reachable) or a reason; "at": monotonic time; "thread"


def start_hub_probe() -> None:
    """Ask in the background whether the hub answers (once per PROBE_TTL_S); never waits."""
    from vpm.models.embeddings import _hub_unreachable

    with _probe_lock:
        fresh = "at" in _probe and time.monotonic() - float(_probe["at"]) < PROBE_TTL_S  # type: ignore[arg-type]
        running = isinstance(_probe.get("thread"), threading.Thread) and _probe["thread"].is_alive()  # type: ignore[union-attr]
        if fresh or running:
            return

        def probe() -> None:
            result = _hub_unreachable()
            with _probe_lock:
                _probe.update(result=result, at=time.monotonic())

        thread = threading.Thread(target=probe, name="vpm-hub-outlook", daemon=True)
        _probe["thread"] = thread
        thread.start()


def hub_answer() -> tuple[bool, bool]:
    """(known, reachable) from the last background probe."""
    with _probe_lock:
        if "at" not in _probe:
            return False, False
        return True, _probe.get("result") is None


def forget_hub_probe() -> None:
    """Forget the last answer (tests)."""
    with _probe_lock:
        _probe.clear()


# ------------------------------------------------------------------------------------------- outlook


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_cached(name: str) -> bool:
    """Whether the hub model `name` has a snapshot in the local Hugging Face cache, by the cache's own layout
    (models--org--name/refs/main names a folder under snapshots/), without importing huggingface_hub."""
    from vpm.models.embeddings import _hub_cache_dir

    cache = _hub_cache_dir()
    candidates = [name] if "/" in name else [f"{_ST_ORG}/{name}", name]
    for repo in candidates:
        folder = cache / ("models--" + repo.replace("/", "--"))
        try:
            commit = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if commit and (folder / "snapshots" / commit).is_dir():
            return True
    return False


def _local_folder(name: str) -> Path | None:
    from vpm.models.embeddings import _as_local_folder

    return _as_local_folder(name)


def _pretty(name: str) -> str:
    """A model name for people: a folder by its last part, never its whole path."""
    folder = _local_folder(name)
    return folder.name if folder is not None else name


def _short(name: str) -> str:
    """A model name for the sidebar: a folder or a hub name by its last part ("clip-ViT-B-32")."""
    return _pretty(name).rstrip("/").rsplit("/", 1)[-1]


def _reads_words(name: str) -> bool:
    """Whether the model `name` reads words: a folder's config says (CLIP and SigLIP do, DINOv2 does not), else its
    name (clip-ViT-B-32, google/siglip2-base-patch16-224...)."""
    import json

    folder = _local_folder(name)
    if folder is not None:
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if isinstance(model_type, str):
            return model_type in _READS_WORDS
    return any(kind in name.lower() for kind in _READS_WORDS)


_READS_WORDS = ("clip", "siglip")  # model types, and hints in a name, of the models that embed words too


def outlook(settings: Settings, loaded: Embedder | None = None, *, probe: bool = True) -> ModelOutlook:
    """The model that runs (or will, on the first search) and one line about it for people."""
    configured = (settings.vpm_model or DEFAULT_MODEL).strip()
    shown = _pretty(configured)
    if loaded is not None:
        if loaded.fallback_reason:
            return ModelOutlook(
                "loaded", loaded.model_id, loaded.supports_text,
                f"Searching with {FALLBACK_NAME}, because {shown} is not available here: search by photo works; "
                "search by words needs CLIP (or SigLIP 2).", BUILT_IN_SHORT,
            )
        if is_built_in(loaded.model_id):  # on purpose: said as before the load, without the descriptor's details
            return ModelOutlook("loaded", loaded.model_id, loaded.supports_text, _BUILT_IN_LINE, BUILT_IN_SHORT)
        ways = "by photo or by words" if loaded.supports_text else "by photo (this model does not read words)"
        name = _pretty(loaded.display_name)
        return ModelOutlook("loaded", loaded.model_id, loaded.supports_text, f"{name} is ready: search {ways}.",
                            _short(loaded.display_name))
    if configured.lower() == FALLBACK_MODEL:
        return ModelOutlook("ready", BUILT_IN_ID, False, _BUILT_IN_LINE, BUILT_IN_SHORT)
    fallback = ModelOutlook(
        "fallback", BUILT_IN_ID, False,
        f"{shown} cannot be downloaded here, so {FALLBACK_NAME} runs instead, with no wait: search by photo works; "
        "search by words needs CLIP (or SigLIP 2).", BUILT_IN_SHORT,
    )
    words = _reads_words(configured)
    ways = "by photo or by words" if words else "by photo"
    short = _short(configured)
    folder = _local_folder(configured)
    if folder is not None:
        if not folder.is_dir():
            return fallback
        return ModelOutlook("ready", model_slug(configured), words,
                            f"{shown} is on this machine and loads in a few seconds on the first search: search {ways}.",
                            short)
    if is_cached(configured):
        return ModelOutlook("ready", model_slug(configured), words,
                            f"{shown} is on this machine and loads in a few seconds on the first search: search {ways}.",
                            short)
    if _hub_offline():
        return fallback
    if probe:
        start_hub_probe()
    known, reachable = hub_answer()
    if not known:
        return ModelOutlook("checking", model_slug(configured), words,
                            f"{shown} is not on this machine yet: checking whether it can be downloaded…", short)
    if not reachable:
        return fallback
    return ModelOutlook("download", model_slug(configured), words,
                        f"{shown} is downloaded on the first search{_download_size(configured)}, then loads from "
                        f"disk: search {ways}.", short)


_BUILT_IN_LINE = (f"{FALLBACK_NAME[0].upper()}{FALLBACK_NAME[1:]} runs with no download: search by photo "
                  "(it does not read words).")


def _download_size(name: str) -> str:
    return " (about 600 MB, once)" if name.removeprefix(f"{_ST_ORG}/") == DEFAULT_MODEL else " (once)"


def for_matcher(matcher: Matcher, *, probe: bool = True) -> ModelOutlook:
    return outlook(matcher.settings, matcher.embedder if matcher.model_loaded else None, probe=probe)


# ------------------------------------------------------------------------------------------- words


def words_unavailable(settings: Settings, embedder: Embedder) -> str | None:
    """Why search by words cannot run with the model that runs, and what to do, for people; None when it can.

    When VPM_MODEL names a CLIP model that could not be loaded, it says so (not downloadable here, not on this
    machine...) and that the built-in image model runs in its place: never "set VPM_MODEL to a CLIP model" to
    someone who has. Names models, never a path, a host or an exception's text. Starts in lower case, as
    VpmError messages do (the faces make it a sentence).
    """
    if embedder.supports_text:
        return None
    configured = (settings.vpm_model or DEFAULT_MODEL).strip()
    shown = _pretty(configured)
    instead = "search with a photo instead"
    restart = "then restart the app (the model is loaded once)"
    if not embedder.fallback_reason:
        running = FALLBACK_NAME if is_built_in(embedder.model_id) else _pretty(embedder.display_name)
        return (f"search by words needs a CLIP model (or a SigLIP 2 one), and {running}, set in VPM_MODEL, reads "
                f"photos only: {instead}, "
                f"or set VPM_MODEL to a CLIP model such as {DEFAULT_MODEL} (downloaded once, about 600 MB) and "
                "restart the app.")
    cause, fix = _why_not_loaded(configured, embedder.fallback_reason)
    return (f"search by words is off: {shown} {cause}, so {FALLBACK_NAME} is running in its place, and it reads "
            f"photos only. For now, {instead}; to search by words, {fix}, {restart}.")


def _why_not_loaded(configured: str, reason: str) -> tuple[str, str]:
    """(what went wrong, what to do) for a configured model that could not be loaded, from the fallback reason
    vpm.models.embeddings gives (its wording is matched here, never shown: it may hold a path or a host)."""
    size = "about 600 MB, downloaded once" if "600 MB" in _download_size(configured) else "downloaded once"
    if "HF_HUB_OFFLINE is set" in reason:
        return ("is not on this machine and cannot be downloaded, because HF_HUB_OFFLINE is set",
                f"unset HF_HUB_OFFLINE where the Hugging Face hub can be reached ({size}), or set VPM_MODEL to a "
                "folder holding a copy of it")
    if "cannot be reached" in reason:
        return ("could not be downloaded: the Hugging Face hub cannot be reached from this machine",
                f"let this machine reach the Hugging Face hub, directly or through HTTPS_PROXY ({size}), or copy "
                "the model's folder here and set VPM_MODEL to that folder")
    if "does not exist" in reason:
        return ("is not on this machine (VPM_MODEL names a folder that does not exist)",
                f"set VPM_MODEL to the folder that holds the model, or to {DEFAULT_MODEL} to download it")
    if "does not hold a usable model" in reason:
        return ("could not be loaded: its folder does not hold a complete model",
                "copy the whole model folder again (its configuration, weights and tokenizer)")
    if "NaFlex" in reason:
        return ("is a SigLIP 2 NaFlex checkpoint (a variable patch grid), which this app does not run",
                "set VPM_MODEL to a fixed-resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224")
    if "but not images" in reason:
        return ("does not read photos (it is not a CLIP, SigLIP 2 or DINOv2 model)",
                f"set VPM_MODEL to a CLIP model such as {DEFAULT_MODEL}")
    return "could not be loaded (the Health page says why)", "fix what Health reports"


def not_loaded(name: str, reason: str) -> str:
    """Why the model `name` could not be loaded and what to do, in one sentence for people (no path, no host)."""
    cause, fix = _why_not_loaded(name, reason)
    return f"{_pretty(name)} {cause}: to use it, {fix}."
