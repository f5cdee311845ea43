"""A bounded two-stage pipeline: reading, decoding and resizing on a background thread while the model embeds.

Imports and index rebuilds spend their time in two places: turning stored bytes into the model's input (read,
decode, resize, normalise: Pillow and numpy, which release the GIL) and the network itself (ONNX Runtime or
torch, which release it too). `prefetch` runs the first for the next batch while the caller does the second for
this one, in order, with at most `ahead` finished batches waiting, so memory stays bounded (a few batches of
pixels) whatever the catalog's size. One background thread: on a 2-core laptop the network already fills the
cores; more decoders would only take them from it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
U = TypeVar("U")

log = logging.getLogger(__name__)

DEFAULT_AHEAD = 2
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], work: Callable[[T], U], *, ahead: int = DEFAULT_AHEAD,
             name: str = "vpm-prefetch") -> Iterator[U]:
    """`work(item)` for each item, computed on one background thread up to `ahead` items before the caller asks
    for them; yielded in the items' order. An exception in `work` is raised here, at its item's turn. Leaving the
    loop early (break, an exception) stops the background thread after the item it is on."""
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1 (got {ahead})")
    results: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    outcome: Any = work(item)
                except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised at its turn
                    outcome = _Failed(err)
                if not _put(outcome):
                    return
                if isinstance(outcome, _Failed):
                    return
        except BaseException as err:  # noqa: BLE001 - the items' own iterator failed: the consumer raises it
            _put(_Failed(err))
            return
        _put(_DONE)

    def _put(value: Any) -> bool:
        while not stop.is_set():
            try:
                results.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            value = results.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.error
            yield value
    finally:
        stop.set()
        worker.join()


def embedder_stages(embedder) -> tuple[Callable[[list], Any], Callable[[Any], Any]]:
    """(prepare, embed): the embedder's CPU preprocessing of a batch of images, for the background stage, and
    its network call on what that made. Embedders without the split (test doubles) get (keep the images,
    embed_images)."""
    if hasattr(embedder, "embed_prepared") and hasattr(embedder, "prepare_images"):
        return embedder.prepare_images, embedder.embed_prepared
    return (lambda images: images), embedder.embed_images


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items; a generator is consumed as it goes (never held whole)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
