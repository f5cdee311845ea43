"""Choosing the model: DINOv2 and SigLIP 2 checkpoints through transformers (vpm/models/hf_models.py), beside CLIP.

Tiny random checkpoints are built offline (tests/tiny_clip.py) in the real ones' layout and loaded through
`load_embedder`, exactly as `VPM_MODEL=<folder>` or a cached `facebook/dinov2-small` would be: they embed, their ONNX
export matches torch, a checked export starts without torch, SigLIP 2 reads words and DINOv2 does not, and
`python -m vpm evaluate --model A --model B` compares them on a catalog without touching its vectors. No download.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpm.core.config import load_settings
from vpm.core.images import MAX_ASPECT_RATIO
from vpm.models import model_outlook, onnx_runtime
from vpm.models.embeddings import EfficientNetEmbedder, EmbeddingError, clear_embedder_cache, load_embedder
from vpm.models.hf_models import TransformersEmbedder

from hostile_images import HOSTILE_IMAGES, guard_resizes
from synthetic import shopper_view, textured, to_bytes
from tiny_clip import build_tiny_dinov2, build_tiny_siglip2

TEXTS = ["a red running shoe", "", "Crème brûlée 😀", "organic bananas " * 30]


@pytest.fixture(scope="session")
def dinov2_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)  # the tiny model gains nothing from more threads on a busy machine
    return build_tiny_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2")


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_tiny_siglip2(tmp_path_factory.mktemp("models") / "tiny-siglip2")


@pytest.fixture(autouse=True)
def fresh_models():
    clear_embedder_cache()
    yield
    clear_embedder_cache()


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("VPM_ONNX_CACHE", str(cache))
    return cache


def hub_copy(model_dir: Path, cache: Path, repo_id: str) -> Path:
    """`model_dir` laid out as huggingface_hub caches a download of `repo_id`; returns the snapshot folder."""
    commit = "1" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # both L2-normalised


# ------------------------------------------------------------------------------------------------ DINOv2


def test_dinov2_embeds_photos_as_its_cls_token(dinov2_dir):
    import torch
    from transformers import AutoImageProcessor, AutoModel

    embedder = load_embedder(str(dinov2_dir), "cpu")
    images = onnx_runtime.probe_images(5)
    vectors = embedder.embed_images(images)

    assert isinstance(embedder, TransformersEmbedder) and embedder.dim == 32 and vectors.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors[:1], vectors[1:]).max() < 0.9999  # different photos, different vectors
    # Computed here straight from transformers: the checkpoint's processor, the CLS token after the last norm.
    model, processor = AutoModel.from_pretrained(dinov2_dir).eval(), AutoImageProcessor.from_pretrained(dinov2_dir)
    with torch.inference_mode():
        cls = model(**processor(images=images, return_tensors="pt")).last_hidden_state[:, 0].numpy()
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    assert cosines(vectors, cls).min() >= 0.999


def test_dinov2_reads_no_words_and_search_by_words_says_why(dinov2_dir):
    embedder = load_embedder(str(dinov2_dir), "cpu")
    settings = load_settings(vpm_model=str(dinov2_dir))

    assert not embedder.supports_text and embedder.fallback_reason is None
    with pytest.raises(EmbeddingError, match="embeds images only"):
        embedder.embed_texts(["a red mug"])
    message = model_outlook.words_unavailable(settings, embedder)
    assert "search by words needs a CLIP model" in message and "tiny-dinov2" in message
    assert str(dinov2_dir.parent) not in message
    seen = model_outlook.outlook(settings)  # before it loads, from the folder's config
    assert seen.state == "ready" and not seen.words and "search by photo." in seen.line


# ------------------------------------------------------------------------------------------------ SigLIP 2


def test_siglip2_embeds_words_and_photos_in_one_space(siglip2_dir):
    import torch
    from transformers import AutoModel, AutoProcessor

    embedder = load_embedder(str(siglip2_dir), "cpu")
    texts = embedder.embed_texts(TEXTS)

    assert isinstance(embedder, TransformersEmbedder) and embedder.supports_text
    assert texts.shape == (len(TEXTS), embedder.dim) == (4, 32)
    assert embedder.embed_images(onnx_runtime.probe_images(2)).shape == (2, 32)
    # SigLIP 2 was trained on lower-cased text, padded to 64 tokens: what transformers computes for that.
    np.testing.assert_allclose(embedder.embed_texts(["A RED Running SHOE"]), texts[:1], atol=1e-6)
    model, processor = AutoModel.from_pretrained(siglip2_dir).eval(), AutoProcessor.from_pretrained(siglip2_dir)
    tokens = processor.tokenizer([t.lower() for t in TEXTS], padding="max_length", max_length=64, truncation=True,
                                 return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_text_features(**tokens).pooler_output.numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert cosines(texts, expected).min() >= 0.999
    assert model_outlook.words_unavailable(load_settings(vpm_model=str(siglip2_dir)), embedder) is None
    assert model_outlook.outlook(load_settings(vpm_model=str(siglip2_dir))).words


@pytest.mark.parametrize("runtime", ["auto", "torch"])
@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_a_strip_photo_is_embedded_with_bounded_memory(dinov2_dir, hostile, runtime, monkeypatch):
    """DINOv2's processor scales the short side up before its crop (40 px here, 256 for the real ones): the
    embedder cuts the photo to MAX_ASPECT_RATIO first, on ONNX Runtime (the numpy copy) as on torch (the processor)."""
    embedder = load_embedder(str(dinov2_dir), "cpu", runtime=runtime)
    short_side = 40
    sizes = guard_resizes(monkeypatch, short_side * (short_side * MAX_ASPECT_RATIO + 1))

    vectors = embedder.embed_images([hostile.pil()])

    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
    assert sizes  # the guard saw the resize


# --------------------------------------------------------------------------------------------- ONNX Runtime


@pytest.mark.parametrize("which", ["dinov2", "siglip2"])
def test_the_onnx_export_matches_torch_and_keeps_the_models_id(which, dinov2_dir, siglip2_dir, own_cache):
    folder = dinov2_dir if which == "dinov2" else siglip2_dir
    images = [*onnx_runtime.probe_images(6), Image.new("RGB", (41, 900), (10, 200, 30))]
    fast = load_embedder(str(folder), "cpu")
    on_torch = load_embedder(str(folder), "cpu", runtime="torch")

    assert fast.runtime.startswith("onnx-"), fast.runtime_reason
    assert on_torch.runtime == "torch" and fast.model_id == on_torch.model_id
    assert cosines(fast.embed_images(images), on_torch.embed_images(images)).min() >= 0.999
    assert fast._onnx.pixels.fast is not None  # the processor's copy in numpy reproduced its pixels
    np.testing.assert_allclose(fast._onnx.pixels(images), fast.parts.pixels(images), atol=1e-4)
    if fast.supports_text:
        assert cosines(fast.embed_texts(TEXTS), on_torch.embed_texts(TEXTS)).min() >= 0.999
    (export,) = list(own_cache.iterdir())
    model = json.loads((export / "manifest.json").read_text())["model"]
    assert model["kind"] == "hf" and model["needs_torch"] is None and model["dim"] == 32
    assert model["family"] == ("dinov2" if which == "dinov2" else "siglip")
    assert model["supports_text"] is (which == "siglip2")


@pytest.mark.parametrize("which", ["dinov2", "siglip2"])
def test_a_checked_export_starts_without_torch_and_computes_the_same(which, dinov2_dir, siglip2_dir, own_cache):
    folder = dinov2_dir if which == "dinov2" else siglip2_dir
    images = onnx_runtime.probe_images(4)
    first = load_embedder(str(folder), "cpu")
    clear_embedder_cache()

    second = load_embedder(str(folder), "cpu")

    assert first._parts is not None and second._parts is None  # made from the export: no torch model at all
    assert second.describe() == first.describe()
    np.testing.assert_array_equal(second.embed_images(images), first.embed_images(images))
    if second.supports_text:
        np.testing.assert_array_equal(second.embed_texts(TEXTS), first.embed_texts(TEXTS))
    assert second.parts.model is not None  # still there, on torch, for whoever asks


# ---------------------------------------------------------------------------------------- where it comes from


def test_a_cached_hub_checkpoint_loads_from_disk(dinov2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_copy(dinov2_dir, tmp_path / "hub", "acme/tiny-dinov2")

    embedder = load_embedder("acme/tiny-dinov2", "cpu")

    assert isinstance(embedder, TransformersEmbedder) and embedder.model_id == "acme--tiny-dinov2"
    assert embedder.fallback_reason is None and not embedder.supports_text


def test_a_checkpoint_not_cached_is_downloaded_when_the_hub_answers(dinov2_dir, tmp_path, monkeypatch):
    """Its config first (is it DINOv2 or SigLIP?), then the files a checkpoint needs, into the Hugging Face cache;
    the hub is a stand-in here that serves the tiny checkpoint (no test may download)."""
    import huggingface_hub

    from vpm.models import embeddings

    hub, asked = tmp_path / "hub", []
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(embeddings, "_hub_unreachable", lambda timeout=3.0: None)

    def snapshot(repo_id: str, cache_dir: str) -> Path:
        folder = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        return folder / "snapshots" / (folder / "refs" / "main").read_text()

    def file_download(repo_id, filename, cache_dir=None, **_kwargs):
        asked.append(("file", repo_id, filename))
        if not (Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))).exists():
            hub_copy(dinov2_dir, Path(cache_dir), repo_id)
        return str(snapshot(repo_id, cache_dir) / filename)

    def snapshot_download(repo_id, cache_dir=None, local_files_only=False, allow_patterns=None, **_kwargs):
        if local_files_only:
            try:
                return str(snapshot(repo_id, cache_dir))
            except OSError:
                raise huggingface_hub.errors.LocalEntryNotFoundError(repo_id) from None
        asked.append(("snapshot", repo_id, tuple(allow_patterns)))
        return str(snapshot(repo_id, cache_dir))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", file_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    embedder = load_embedder("acme/dinov2-tiny", "cpu")

    assert isinstance(embedder, TransformersEmbedder) and embedder.fallback_reason is None
    assert asked[0] == ("file", "acme/dinov2-tiny", "config.json")
    assert asked[1][:2] == ("snapshot", "acme/dinov2-tiny") and "*.safetensors" in asked[1][2]
    assert embedder.embed_images(onnx_runtime.probe_images(1)).shape == (1, 32)


def test_a_checkpoint_not_cached_offline_falls_back_to_the_built_in_model_with_the_reason():
    embedder = load_embedder("facebook/dinov2-small", "cpu")  # HF_HUB_OFFLINE is set for every test

    assert isinstance(embedder, EfficientNetEmbedder)
    assert "facebook/dinov2-small" in embedder.fallback_reason and "HF_HUB_OFFLINE" in embedder.fallback_reason


def test_a_naflex_checkpoint_falls_back_and_says_which_to_use(tmp_path):
    folder = tmp_path / "siglip2-naflex"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip2"}))

    embedder = load_embedder(str(folder), "cpu")

    assert isinstance(embedder, EfficientNetEmbedder) and "NaFlex" in embedder.fallback_reason
    message = model_outlook.words_unavailable(load_settings(vpm_model=str(folder)), embedder)
    assert "google/siglip2-base-patch16-224" in message and str(tmp_path) not in message


# --------------------------------------------------------------------------------------------- searching


def add_products(matcher, n: int = 4) -> None:
    """n products of two photos each (a pack and a shopper's view of it), one category for the even ones."""
    for s in range(1, n + 1):
        photos = [(to_bytes(textured(s)), f"p{s}-a.png"), (to_bytes(shopper_view(textured(s), s), "JPEG"), f"p{s}-b.jpg")]
        matcher.create_product(photos, name=f"Pack {s}", category="Even" if s % 2 == 0 else "Odd")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_siglip2_searches_by_words_and_dinov2_hides_it(search_settings, siglip2_dir, dinov2_dir, monkeypatch):
    from vpm.core.matcher import Matcher

    monkeypatch.setenv("VPM_MODEL", str(siglip2_dir))
    by_words = Matcher(load_settings())
    add_products(by_words, 2)

    assert by_words.text_search_unavailable() is None
    assert by_words.embed_query_text("a striped pack").shape == (32,)  # SigLIP 2's own text tower
    found = by_words.search_text("a striped pack", threshold=-1.0)
    assert {m.product.name for m in found.results} == {"Pack 1", "Pack 2"}

    monkeypatch.setenv("VPM_MODEL", str(dinov2_dir))
    photos_only = Matcher(load_settings())
    assert "search by words needs a CLIP model" in photos_only.text_search_unavailable()
    with pytest.raises(EmbeddingError):
        photos_only.embed_query_text("a striped pack")  # no text tower (the words index may still answer)
    image = photos_only.search_image(to_bytes(textured(1)), "pack.png", threshold=-1.0)
    assert image.results and image.results[0].product.name == "Pack 1"  # its photos embedded on first search


# ------------------------------------------------------------------------------------------- comparing


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_evaluate_compares_models_side_by_side_and_leaves_the_catalogs_vectors_alone(
    search_settings, tiny_clip_dir, dinov2_dir, siglip2_dir, capsys, tmp_path, monkeypatch
):
    from vpm.core.matcher import Matcher
    from vpm.faces.cli import main

    add_products(Matcher(search_settings))
    before = files_of(search_settings.vpm_data_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the other models' vectors go, for a while

    assert main(["evaluate", "--model", str(tiny_clip_dir), "--model", str(dinov2_dir),
                 "--model", str(siglip2_dir)]) == 0

    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if "tiny-clip" in line)
    assert head.split() == ["tiny-clip", "tiny-dinov2", "tiny-siglip2"]
    assert "3 models on the same 8 held-out photos of 4 products" in out
    vectors = next(line for line in out.splitlines() if line.startswith("vectors"))
    assert vectors.split()[1:] == ["the", "catalog's", "embedded", "here", "embedded", "here"]
    assert "recall@1" in out and "ranking p50 / p95 ms" in out and "Even" in out and "Odd" in out
    assert files_of(search_settings.vpm_data_dir) == before  # no vector, no table, no fit written
    assert list(scratch.iterdir()) == []  # the temporary folder is gone

    assert main(["evaluate", "--model", str(tiny_clip_dir), "--model", str(dinov2_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    clip, dino = document["models"]
    assert (clip["vectors"], dino["vectors"]) == ("catalog", "temporary") and document["photos"] == 8
    assert clip["queries"] == dino["queries"] == 8 and clip["reads_words"] is not dino["reads_words"]
    assert all(0 <= m["recall@1"] <= m["recall@5"] <= 1 and m["embed_p50_ms"] is not None for m in document["models"])
    assert {row["category"] for row in document["categories"]} == {"Even", "Odd"}
    assert all(set(row) >= {str(tiny_clip_dir), str(dinov2_dir)} for row in document["categories"])
    assert files_of(search_settings.vpm_data_dir) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_model_that_cannot_be_loaded_is_refused_before_anything_is_embedded(search_settings, tiny_clip_dir, capsys):
    from vpm.core.matcher import Matcher
    from vpm.faces.cli import main

    add_products(Matcher(search_settings), 2)
    before = files_of(search_settings.vpm_data_dir)

    assert main(["evaluate", "--model", str(tiny_clip_dir), "--model", "facebook/dinov2-small"]) == 1

    err = capsys.readouterr().err
    assert "'facebook/dinov2-small' cannot be loaded here, so nothing was compared" in err and "HF_HUB_OFFLINE" in err
    assert files_of(search_settings.vpm_data_dir) == before


def test_the_models_on_this_machine_are_offered_without_loading_any(dinov2_dir, siglip2_dir, tmp_path, monkeypatch):
    from vpm.models import model_compare

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_copy(dinov2_dir, tmp_path / "hub", "acme/tiny-dinov2")
    hub_copy(siglip2_dir, tmp_path / "hub", "acme/tiny-siglip2")
    not_a_model = tmp_path / "hub" / "models--acme--dataset-thing" / "snapshots" / "x"
    not_a_model.mkdir(parents=True)
    (not_a_model.parents[1] / "refs").mkdir()
    (not_a_model.parents[1] / "refs" / "main").write_text("x")

    offered = model_compare.models_on_this_machine("/somewhere/models/my-clip")

    assert offered == ["/somewhere/models/my-clip", "efficientnet-lite0", "acme/tiny-dinov2", "acme/tiny-siglip2"]
    assert [model_compare.label(name) for name in offered][:2] == ["my-clip", "EfficientNet-Lite0 (built-in)"]
