"""Which model will run, decided without loading it and without waiting: for Home, the sidebar, and counting
the vectors that matter (health, consistency) before the first search.

vpm.embeddings loads VPM_MODEL on the first search, or falls back to the built-in image-only model when it cannot
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

from .embeddings import DEFAULT_DESCRIPTOR, DEFAULT_MODEL, FALLBACK_MODEL, model_slug

if TYPE_CHECKING:
    from .config import Settings
    from .embeddings import Embedder
    from .matcher import Matcher

State = Literal["loaded", "ready", "download", "fallback", "checking"]
FALLBACK_NAME = "the built-in image model (EfficientNet-Lite0)"
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

    @property
    def fallback(self) -> bool:
        """Whether the built-in model runs (with any of its descriptors; the first one's id is the bare name)."""
        return self.model_id == FALLBACK_MODEL or self.model_id.startswith(f"{FALLBACK_MODEL}-")


# ------------------------------------------------------------------------------------------- hub probe

_probe_lock = threading.Lock()
_probe: dict[str, object] = {}  # "result": None (reachable) or a reason; "at": monotonic time; "thread"


def start_hub_probe() -> None:
    """Ask in the background whether the hub answers (once per PROBE_TTL_S); never waits."""
    from .embeddings import _hub_unreachable

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
    from .embeddings import _hub_cache_dir

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
    from .embeddings import _as_local_folder

    return _as_local_folder(name)


def _pretty(name: str) -> str:
    """A model name for people: a folder by its last part, never its whole path."""
    folder = _local_folder(name)
    return folder.name if folder is not None else name


def _reads_words(name: str) -> bool:
    return "clip" in name.lower()


def outlook(settings: Settings, loaded: Embedder | None = None, *, probe: bool = True) -> ModelOutlook:
    """The model that runs (or will, on the first search) and one line about it for people."""
    configured = (settings.vpm_model or DEFAULT_MODEL).strip()
    shown = _pretty(configured)
    if loaded is not None:
        if loaded.fallback_reason:
            return ModelOutlook(
                "loaded", loaded.model_id, loaded.supports_text,
                f"Searching with {FALLBACK_NAME}, because {shown} is not available here: search by photo works; "
                "search by words needs CLIP.",
            )
        ways = "by photo or by words" if loaded.supports_text else "by photo (this model does not read words)"
        name = _pretty(loaded.display_name)
        return ModelOutlook("loaded", loaded.model_id, loaded.supports_text, f"{name} is ready: search {ways}.")
    if configured.lower() == FALLBACK_MODEL:
        return ModelOutlook("ready", BUILT_IN_ID, False,
                            f"{FALLBACK_NAME[0].upper()}{FALLBACK_NAME[1:]} runs with no download: search by photo "
                            "(it does not read words).")
    fallback = ModelOutlook(
        "fallback", BUILT_IN_ID, False,
        f"{shown} cannot be downloaded here, so {FALLBACK_NAME} runs instead, with no wait: search by photo works; "
        "search by words needs CLIP.",
    )
    words = _reads_words(configured)
    ways = "by photo or by words" if words else "by photo"
    folder = _local_folder(configured)
    if folder is not None:
        if not folder.is_dir():
            return fallback
        return ModelOutlook("ready", model_slug(configured), words,
                            f"{shown} is on this machine and loads in a few seconds on the first search: search {ways}.")
    if is_cached(configured):
        return ModelOutlook("ready", model_slug(configured), words,
                            f"{shown} is on this machine and loads in a few seconds on the first search: search {ways}.")
    if _hub_offline():
        return fallback
    if probe:
        start_hub_probe()
    known, reachable = hub_answer()
    if not known:
        return ModelOutlook("checking", model_slug(configured), words,
                            f"{shown} is not on this machine yet: checking whether it can be downloaded…")
    if not reachable:
        return fallback
    size = " (about 600 MB, once)" if configured.removeprefix(f"{_ST_ORG}/") == DEFAULT_MODEL else " (once)"
    return ModelOutlook("download", model_slug(configured), words,
                        f"{shown} is downloaded on the first search{size}, then loads from disk: search {ways}.")


def for_matcher(matcher: Matcher, *, probe: bool = True) -> ModelOutlook:
    return outlook(matcher.settings, matcher.embedder if matcher.model_loaded else None, probe=probe)
