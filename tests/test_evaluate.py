"""The quality report (vpm/core/evaluate.py, `python -m vpm evaluate`): hold-out search over the catalog; reads only."""

from __future__ import annotations

import json

import pytest

from vpm.core.evaluate import Evaluation, NothingToEvaluate, evaluate

from synthetic import shopper_view, textured, to_bytes


def seed(matcher, n: int = 4, extra_single: bool = True):
    """n products with two photos each (a 'pack' and a shopper's view of it), plus one with a single photo."""
    products = []
    for s in range(1, n + 1):
        photos = [(to_bytes(textured(s)), f"p{s}-a.png"), (to_bytes(shopper_view(textured(s), s), "JPEG"), f"p{s}-b.jpg")]
        products.append(matcher.create_product(photos, name=f"Pack {s}", category="Even" if s % 2 == 0 else "Odd"))
    if extra_single:
        matcher.create_product([(to_bytes(textured(99)), "single.png")], name="Single", category="Odd")
    return products


def files_of(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_each_photo_of_a_product_with_two_photos_is_held_out_and_found(matcher):
    seed(matcher)

    report = evaluate(matcher)

    assert report.queries == report.planned == 8  # the single-photo product is a reference only
    assert report.products == 4 and not report.stopped and report.rerank
    assert report.recall_at_1 == 1.0 and report.recall_at_5 == 1.0  # verification finds each pack's other photo
    assert sorted(c.category for c in report.categories) == ["Even", "Odd"]
    assert all(c.queries == 4 for c in report.categories)
    assert report.confusions == []
    # The score is fitted on these held-out photos: a probability curve, its default threshold, each signal's part.
    assert report.score_model is not None and report.score_model.source == "catalog"
    assert 0 <= report.threshold <= 1 and report.threshold == report.score_model.threshold
    assert [s.name for s in report.signals][:2] == ["image only", "+ keypoints"]
    assert sum(s.used for s in report.signals) == 1
    assert report.calibration and sum(b.pairs for b in report.calibration) == 8
    document = report.as_dict()
    assert document["recall@1"] == 1.0 and document["queries"] == 8
    # Latency: each signal's ranking a query (p50 <= p95), and the model's decoding and embedding of a query photo.
    assert all(s.p50_ms is not None and 0 <= s.p50_ms <= s.p95_ms for s in report.signals)
    image_only, keypoints = report.signals[:2]
    assert keypoints.p50_ms > image_only.p50_ms  # verification is timed on top of the search
    assert report.embed_photos == 8 and 0 < report.embed_p50_ms <= report.embed_p95_ms
    assert document["signals"][0]["p95_ms"] is not None and document["embed_p50_ms"] is not None


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_without_verification_the_worst_confusions_are_listed(matcher):
    products = seed(matcher)

    report = evaluate(matcher, rerank=False)

    assert not report.rerank
    wrong = list(report.confusions)
    assert len(wrong) == report.queries - round(report.recall_at_1 * report.queries)
    ids = {p.id for p in products} | {"single"}
    for c in wrong:
        assert c.wrong_product != c.query_product and c.wrong_score >= c.right_score
        assert c.query_photo and c.right_photo and c.wrong_photo and c.query_product in ids
    assert [c.margin for c in wrong] == sorted((c.margin for c in wrong), reverse=True)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_evaluation_changes_nothing_on_disk(matcher, search_settings):
    seed(matcher)
    before = files_of(search_settings.vpm_data_dir)

    evaluate(matcher)

    assert files_of(search_settings.vpm_data_dir) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_evaluation_can_be_stopped_and_reports_what_it_did(matcher):
    seed(matcher)
    evaluation = Evaluation(matcher, batch=2)
    seen = []

    report = evaluation.run(progress=lambda done, total: seen.append((done, total)),
                            should_stop=lambda: len(seen) >= 1)

    assert report.stopped and 0 < report.queries < report.planned == 8
    assert seen[0][1] == 8


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_catalog_without_a_second_photo_has_nothing_to_evaluate(matcher):
    matcher.create_product([(to_bytes(textured(1)), "one.png")], name="One", category="Odd")

    with pytest.raises(NothingToEvaluate, match="two or more photos"):
        Evaluation(matcher)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_empty_catalog_has_nothing_to_evaluate_and_gets_no_tables(matcher, search_settings):
    with pytest.raises(NothingToEvaluate, match=r"no .* vectors"):
        Evaluation(matcher)
    folder = search_settings.vpm_data_dir
    assert not folder.exists() or files_of(folder) == {}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_sample_is_evaluated_past_the_limit(matcher):
    seed(matcher)

    report = evaluate(matcher, max_queries=3)

    assert report.sampled and report.planned == 3 == report.queries


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_evaluate_prints_the_report_and_json(matcher, capsys):
    from vpm.faces.cli import main

    seed(matcher)
    assert main(["evaluate", "--no-rerank"]) == 0
    out = capsys.readouterr().out
    assert "recall@1" in out and "held-out photos of 4 products" in out and "Even" in out
    assert "ranking p50 / p95 ms" in out and "a query photo's decoding and embedding: p50" in out

    assert main(["evaluate", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["queries"] == 8 and document["rerank"] is True and document["recall@1"] == 1.0


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cli_evaluate_on_a_catalog_without_second_photos_says_what_to_do(matcher, capsys):
    from vpm.faces.cli import main

    matcher.create_product([(to_bytes(textured(1)), "one.png")], name="One", category="Odd")

    assert main(["evaluate"]) == 1
    assert "add more photos" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_same_photos_are_held_out_whatever_order_the_vectors_are_read_in(matcher):
    """A comparison gives every model the same photos: the sample, folds and timed photos follow the photos' keys."""
    seed(matcher, n=6)
    index = matcher.vector_index(matcher.embedder.model_id)

    class Reversed:  # the same vectors, read in the opposite order
        model_id, description, dim = index.model_id, index.description, index.dim

        def count(self):
            return index.count()

        def iter_vectors(self):
            for keys, products, vectors in reversed(list(index.iter_vectors(batch_size=3))):
                yield keys[::-1], products[::-1], vectors[::-1]

    one = Evaluation(matcher, max_queries=5)
    other = Evaluation(matcher, max_queries=5, vectors=Reversed())
    only = Evaluation(matcher, max_queries=50, only_keys=set(one.photo_keys[:6]))

    assert [one.photo_keys[i] for i in one.queries] == [other.photo_keys[i] for i in other.queries]
    assert one.run().recall_at_1 == other.run().recall_at_1
    assert only.photo_keys == one.photo_keys[:6] and only.run().embed_photos == 0  # a fit's evaluation times nothing
