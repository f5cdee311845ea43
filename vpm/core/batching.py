"""Micro-batching of concurrent queries: many requests waiting on the model become one model call.

The REST API answers each request on a thread of its own. Left alone, eight concurrent searches make eight model
calls at once, each asking for every core: they slow each other down and each waits for the others. Instead, a
request hands its (already decoded and preprocessed) query to a `MicroBatcher`, whose one worker thread runs the
model on everything waiting: the first request of a quiet server goes straight through (no added wait), and the
requests that arrive while a call runs are embedded together in the next one. Each gets back its own vector, in
its own order, or the exception the call raised.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32


class MicroBatcher(Generic[T]):
    """`batcher(item) -> result`, from any thread; `run(items) -> results` is called on one worker thread with
    every item waiting (at most `max_batch`), and must return one result per item, in order."""

    def __init__(self, run: Callable[[list[T]], Sequence[Any]], *, max_batch: int = DEFAULT_MAX_BATCH,
                 name: str = "vpm-batch"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        self._run = run
        self.max_batch = max_batch
        self.name = name
        self._queue: queue.SimpleQueue[tuple[T, Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches: list[int] = []  # the size of each call made (the last 1000), for tests and logs

    def __call__(self, item: T) -> Any:
        return self.submit(item).result()

    def submit(self, item: T) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        self._ensure_worker()
        return future

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            waiting = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if not waiting:
                continue
            self.batches = [*self.batches[-999:], len(waiting)]
            try:
                results = self._run([item for item, _future in waiting])
                if len(results) != len(waiting):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(waiting)} items")
            except BaseException as err:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
                for _item, future in waiting:
                    future.set_exception(err)
                continue
            for (_item, future), result in zip(waiting, results, strict=True):
                future.set_result(result)


def merge_prepared(parts: list[Any]) -> Any:
    """One batch from several `Embedder.prepare_images` results: arrays are stacked, lists joined."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    merged: list = []
    for part in parts:
        merged.extend(part)
    return merged


class QueryEmbedder:
    """An embedder's one-query calls, micro-batched: `image(pil) -> vector`, `text(str) -> vector`.

    The image's preprocessing (resize, normalise) runs on the caller's thread, so concurrent requests prepare
    in parallel; only the network call is shared."""

    def __init__(self, embedder, max_batch: int = DEFAULT_MAX_BATCH):
        self.embedder = embedder
        split = hasattr(embedder, "prepare_images") and hasattr(embedder, "embed_prepared")
        self._split = split
        self._images = MicroBatcher(self._embed_images, max_batch=max_batch, name="vpm-image-queries")
        self._texts = MicroBatcher(self._embed_texts, max_batch=max_batch, name="vpm-text-queries")

    def image(self, image) -> np.ndarray:
        prepared = self.embedder.prepare_images([image]) if self._split else [image]
        return self._images(prepared)

    def text(self, text: str) -> np.ndarray:
        return self._texts(text)

    def _embed_images(self, parts: list[Any]) -> np.ndarray:
        merged = merge_prepared(parts)
        if self._split:
            return self.embedder.embed_prepared(merged)
        return self.embedder.embed_images(merged, batch_size=max(1, len(merged)))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed_texts(texts)
