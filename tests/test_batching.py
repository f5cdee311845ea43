"""Micro-batching of concurrent queries (vpm/core/batching.py): one model call for many requests, each its own answer."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vpm.core.batching import MicroBatcher, QueryEmbedder
from vpm.core.matcher import Matcher
from vpm.faces.api import create_app

from conftest import make_product_photo


def test_concurrent_callers_share_calls_and_each_gets_its_own_result():
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.03)  # a model call: others arrive meanwhile
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch=8)
    start = threading.Barrier(24)

    def one(n: int) -> tuple[int, int]:
        start.wait()
        return n, batcher(n)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))

    assert answers == [(n, n * 10) for n in range(24)]
    assert sorted(i for call in calls for i in call) == list(range(24))  # each item embedded exactly once
    assert max(len(call) for call in calls) > 1  # requests that waited were batched
    assert max(len(call) for call in calls) <= 8  # never more than max_batch in one call


def test_a_lone_request_is_not_kept_waiting_for_company():
    batcher = MicroBatcher(lambda items: [i + 1 for i in items])
    started = time.perf_counter()
    assert batcher(41) == 42
    assert batcher.batches == [1]
    assert time.perf_counter() - started < 5  # no timed window: it runs as soon as it is alone


def test_a_failed_call_fails_its_callers_only_and_the_worker_goes_on():
    def run(items):
        if "bad" in items:
            raise RuntimeError("the model call failed")
        return [f"ok {i}" for i in items]

    batcher = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="model call failed"):
        batcher("bad")
    assert batcher("good") == "ok good"


def test_a_wrong_number_of_results_is_an_error_not_a_mix_up():
    batcher = MicroBatcher(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        batcher("x")


def test_batched_query_vectors_are_exactly_the_unbatched_ones(tiny_clip):
    from PIL import Image

    queries = QueryEmbedder(tiny_clip)
    images = [Image.open(io.BytesIO(make_product_photo(n))).convert("RGB") for n in range(12)]
    with ThreadPoolExecutor(12) as pool:
        batched = list(pool.map(queries.image, images))
        texts = list(pool.map(queries.text, [f"product {n}" for n in range(12)]))
    for image, vector in zip(images, batched, strict=True):
        np.testing.assert_allclose(vector, tiny_clip.embed_images([image])[0], atol=1e-5)
    for n, vector in enumerate(texts):
        np.testing.assert_allclose(vector, tiny_clip.embed_texts([f"product {n}"])[0], atol=1e-5)


class SlowEmbedder:
    """The tiny CLIP, with every model call taking 40 ms (so concurrent requests overlap) and counted."""

    def __init__(self, inner):
        self.inner = inner
        for name in ("model_id", "display_name", "dim", "supports_text", "fallback_reason", "device", "runtime",
                     "runtime_reason"):
            setattr(self, name, getattr(inner, name))
        self.calls: list[int] = []

    def describe(self):
        return self.inner.describe()

    def prepare_images(self, images):
        return self.inner.prepare_images(images)

    def embed_prepared(self, prepared):
        self.calls.append(len(prepared))
        time.sleep(0.04)
        return self.inner.embed_prepared(prepared)

    def embed_images(self, images, batch_size=32, progress=None):
        return self.embed_prepared(self.prepare_images(images))

    def embed_texts(self, texts):
        self.calls.append(len(texts))
        time.sleep(0.04)
        return self.inner.embed_texts(texts)


def test_concurrent_api_searches_each_get_their_own_answer(search_settings, tiny_clip):
    seeding = Matcher(search_settings, embedder=tiny_clip)
    products = [seeding.add_product(make_product_photo(n), f"p{n}.png", name=f"Product {n}", category="c")
                for n in range(10)]
    expected = {p.id: seeding.search_image(make_product_photo(n), "q.png", threshold=-1.0, top_k=3).as_dict()
                for n, p in enumerate(products)}

    slow = SlowEmbedder(tiny_clip)
    matcher = Matcher(search_settings, embedder=slow)
    client = TestClient(create_app(search_settings.model_copy(update={"vpm_api_batch_queries": True}), matcher))
    matcher.search_image(make_product_photo(0), "warm.png")  # first search: opens the tables

    def search(n: int):
        resp = client.post("/api/search", files={"image": (f"q{n}.png", make_product_photo(n), "image/png")},
                           data={"top_k": "3", "threshold": "-1"})
        assert resp.status_code == 200, resp.text
        return n, resp.json()

    slow.calls.clear()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(search, range(10)))

    for n, body in answers:
        want = expected[products[n].id]
        assert [r["id"] for r in body["results"]] == [r["id"] for r in want["results"]]
        assert body["results"][0]["id"] == products[n].id  # its own photo, not a neighbour's
        assert [r["score"] for r in body["results"]] == pytest.approx([r["score"] for r in want["results"]],
                                                                      abs=1e-4)
    assert sum(slow.calls) == 10 and max(slow.calls) > 1  # fewer model calls than requests


@pytest.mark.parametrize(("runtime", "batched"), [("torch", True), ("onnx-int8", False), ("onnx-fp32", False)])
def test_auto_batches_only_a_model_running_on_torch(search_settings, tiny_clip, runtime, batched):
    # On ONNX Runtime overlapping calls each get a single-threaded session of their own (no shared call needed).
    slow = SlowEmbedder(tiny_clip)
    slow.runtime = runtime
    matcher = Matcher(search_settings, embedder=slow)
    assert search_settings.vpm_api_batch_queries == "auto"  # the default
    create_app(search_settings, matcher)
    matcher.embed_query_image(make_product_photo(1), "q.png")
    assert (matcher._query_embedder is not None) == batched


def test_batching_can_be_switched_off(search_settings, tiny_clip):
    slow = SlowEmbedder(tiny_clip)
    matcher = Matcher(search_settings, embedder=slow)
    create_app(search_settings.model_copy(update={"vpm_api_batch_queries": False}), matcher)
    matcher.embed_query_image(make_product_photo(1), "q.png")
    assert matcher._query_embedder is None
