"""The bounded decode/embed pipeline (vpm/core/pipeline.py) and its use by index rebuilds and imports."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vpm.core.pipeline import chunked, embedder_stages, prefetch

from conftest import make_product_photo


def test_prefetch_yields_every_result_in_order():
    assert list(prefetch(range(50), lambda n: n * n, ahead=3)) == [n * n for n in range(50)]
    assert list(prefetch([], lambda n: n)) == []


def test_prefetch_runs_ahead_of_the_consumer_but_never_more_than_ahead():
    started: list[int] = []
    consumed: list[int] = []
    lead: list[int] = []

    def work(n: int) -> int:
        lead.append(len(started) - len(consumed))  # items begun but not yet taken by the consumer
        started.append(n)
        return n

    for value in prefetch(range(40), work, ahead=2):
        time.sleep(0.005)  # a slow consumer (the model): the producer would run away if unbounded
        consumed.append(value)

    assert consumed == list(range(40))
    # `ahead` finished results wait in the queue, one more is being made: the bound on what is held at once.
    assert max(lead) <= 2 + 1
    assert max(lead) >= 1  # and it did work ahead


def test_prefetch_overlaps_the_two_stages():
    """Both stages sleep 20 ms an item: one after the other would take 40 ms an item; overlapped, ~20."""
    both = threading.Event()
    in_work = threading.Event()

    def work(n):
        in_work.set()
        time.sleep(0.02)
        in_work.clear()
        return n

    for _ in prefetch(range(10), work, ahead=1):
        time.sleep(0.02)
        if in_work.is_set():
            both.set()
    assert both.is_set()  # the producer was working while the consumer was


def test_an_error_in_the_background_is_raised_at_its_items_turn():
    def work(n):
        if n == 3:
            raise ValueError("item 3 is broken")
        return n

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for value in prefetch(range(10), work):
            got.append(value)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_background_thread():
    started: list[int] = []

    def work(n):
        started.append(n)
        return n

    for value in prefetch(range(1000), work, ahead=2):
        if value == 5:
            break
    time.sleep(0.05)
    assert len(started) <= 5 + 1 + 2 + 1
    assert not [t for t in threading.enumerate() if t.name == "vpm-prefetch"]


def test_batches_prepared_in_the_background_embed_as_embed_images_does(tiny_clip):
    """What an index rebuild does: the embedder's preprocessing on the prefetch thread, its network call here."""
    from PIL import Image

    prepare, embed = embedder_stages(tiny_clip)
    images = [Image.new("RGB", (40 + n, 40), (n * 9 % 256, 80, 120)) for n in range(10)]

    vectors = np.vstack([embed(batch) for batch in prefetch(chunked(images, 4), prepare)])

    np.testing.assert_allclose(vectors, tiny_clip.embed_images(images), atol=1e-5)


def test_a_rebuild_through_the_pipeline_gives_every_photo_its_vector(matcher):
    for seed in range(7):
        matcher.add_product(make_product_photo(seed), f"p{seed}.png", name=f"P{seed}", category="c")
    before = {p.id: matcher.vectors.vectors_for_shas({p.photos[0].sha256}) for p in matcher.iter_products()}

    status = matcher.reindex(rebuild=True)

    assert status.ok and status.vectors == 7
    for product in matcher.iter_products():
        sha = product.photos[0].sha256
        np.testing.assert_allclose(matcher.vectors.vectors_for_shas({sha})[sha], before[product.id][sha], atol=1e-5)
    hit = matcher.search_image(make_product_photo(4), "q.png", threshold=0.0).results[0]
    assert hit.product.name == "P4"


def test_an_import_through_the_pipeline_keeps_order_duplicates_and_thumbnails(matcher, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(9):
        (folder / f"item{n:02d}.png").write_bytes(make_product_photo(n))
    (folder / "item99.png").write_bytes(make_product_photo(3))  # the same bytes as item03: a duplicate
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    report = matcher.import_path(folder, batch_size=4)

    assert [p.name.lower() for p in report.imported] == [f"item{n:02d}" for n in range(9)]  # in order
    assert [i.source.rsplit("/", 1)[-1] for i in report.skipped] == ["item99.png"]
    assert [i.source.rsplit("/", 1)[-1] for i in report.failed] == ["broken.png"]
    for product in report.imported:
        assert matcher.storage.get(product.photos[0].thumbnail_key).startswith(b"RIFF")  # a WebP was written
    assert matcher.index_status().ok


def test_chunked_takes_a_generator_a_chunk_at_a_time():
    pulled = []

    def items():
        for i in range(7):
            pulled.append(i)
            yield i

    chunks = chunked(items(), 3)
    assert next(chunks) == [0, 1, 2] and pulled == [0, 1, 2]  # nothing beyond the first chunk was read
    assert list(chunks) == [[3, 4, 5], [6]]
