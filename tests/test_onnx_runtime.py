"""ONNX Runtime path of the embedders: parity with torch on real photos, the export cache, the torch fallback, ids.

The parity tests use a full-size CLIP ViT-B/32 with random weights (tests/tiny_clip.py's build_full_clip: CLIP's
real shapes, so the same compute and the same numerical behaviour as the released model) and the offline
EfficientNet-Lite0 with its real weights, on the shared product photos. The full model is built once per session
(~500 MB on disk); its export lands in the session's ONNX cache, so it happens once too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vpm.models import onnx_clip, onnx_runtime
from vpm.models.embeddings import clear_embedder_cache, load_embedder

ROOT = Path(__file__).resolve().parents[1]
PHOTO_DIRS = (ROOT.parent / "shared" / "datasets" / "products-photos", Path("/work/shared/datasets/products-photos"))
TEXTS = ["a red running shoe", "x", "blue ceramic coffee mug", "organic bananas " * 30, "LED desk lamp, 40 W, black"]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    folder = next((d for d in PHOTO_DIRS if d.is_dir()), None)
    if folder is None:
        pytest.skip("the shared product photos (shared/datasets/products-photos) are not here")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    # Every 10th photo: grocery phone photos and catalog shots of several shapes (the set is sorted by source).
    images = []
    for path in files[::10]:
        with Image.open(path) as image:
            images.append(ImageOps.exif_transpose(image).convert("RGB"))
    return images


@pytest.fixture(scope="session")
def full_clip_dir(tmp_path_factory) -> Path:
    from tiny_clip import build_full_clip

    return build_full_clip(tmp_path_factory.mktemp("models") / "full-clip-vit-b-32")


@pytest.fixture
def all_cores(monkeypatch):
    """The full-size models export and run with every core (the suite's default is one thread)."""
    monkeypatch.setenv("VPM_THREADS", str(onnx_runtime.available_cores()))


@pytest.fixture(autouse=True)
def fresh_models():
    clear_embedder_cache()
    yield
    clear_embedder_cache()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # both L2-normalised


# ------------------------------------------------------------------------------------------------- parity


def test_full_size_clip_on_onnx_matches_torch_on_real_photos_and_texts(full_clip_dir, photos, all_cores):
    fast = load_embedder(str(full_clip_dir), "cpu")
    assert fast.runtime.startswith("onnx-"), fast.runtime_reason
    fast_images, fast_texts = fast.embed_images(photos), fast.embed_texts(TEXTS)
    clear_embedder_cache()  # one full model in memory at a time
    torch_model = load_embedder(str(full_clip_dir), "cpu", runtime="torch")
    assert torch_model.runtime == "torch"

    image_cos = _cosines(fast_images, torch_model.embed_images(photos))
    text_cos = _cosines(fast_texts, torch_model.embed_texts(TEXTS))

    assert image_cos.min() >= 0.999, image_cos
    assert text_cos.min() >= 0.999, text_cos
    assert fast.model_id == torch_model.model_id  # parity holds: its vectors mix with torch's
    assert fast.dim == torch_model.dim == 512


def test_offline_model_on_onnx_matches_torch_on_real_photos(photos):
    fast = load_embedder("efficientnet-lite0", "cpu")
    assert fast.runtime == "onnx-fp32", fast.runtime_reason
    torch_model = load_embedder("efficientnet-lite0", "cpu", runtime="torch")

    cos = _cosines(fast.embed_images(photos), torch_model.embed_images(photos))

    assert cos.min() >= 0.999, cos
    assert fast.model_id == torch_model.model_id


def test_offline_network_follows_torch_at_any_input_size():
    """The export has dynamic height and width: the network call is all it replaces (preprocessing may change)."""
    import torch

    embedder = load_embedder("efficientnet-lite0", "cpu")
    for height, width in [(224, 224), (224, 336), (300, 224), (160, 480)]:
        batch = np.random.default_rng(height).uniform(-1, 1, (2, 3, height, width)).astype(np.float32)
        with torch.inference_mode():
            expected = embedder._network.extract_features(torch.from_numpy(batch)).numpy()
        got = embedder._feature_maps(batch)
        assert got.shape == expected.shape
        assert onnx_runtime.cosines(got, expected).min() >= 0.999


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx-fp32"])
def test_a_vector_does_not_depend_on_the_rest_of_its_batch(tiny_clip_dir, monkeypatch, threads, runtime):
    """int8 graphs quantize activations by the batch's range: they run a row at a time so a micro-batched
    search answers exactly what it would alone. With 2 threads a batch runs two rows at a time on a
    single-threaded session, a single photo on the session using both: the vectors are the same either way."""
    monkeypatch.setenv("VPM_THREADS", threads)
    embedder = load_embedder(str(tiny_clip_dir), "cpu", runtime=runtime)
    images = onnx_runtime.probe_images(5)
    together = embedder.embed_images(images, batch_size=5)
    alone = np.vstack([embedder.embed_images([image]) for image in images])
    np.testing.assert_allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx-fp32"])
def test_photos_embedded_at_the_same_time_get_the_vectors_they_get_alone(tiny_clip_dir, monkeypatch, runtime):
    """Concurrent searches (API threads) share the network: a call that starts while another runs takes the
    single-threaded session; every photo still gets exactly its own vector."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("VPM_THREADS", "2")
    embedder = load_embedder(str(tiny_clip_dir), "cpu", runtime=runtime)
    images = onnx_runtime.probe_images(6) * 4
    alone = [embedder.embed_images([image])[0] for image in images]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda image: embedder.embed_images([image])[0], images))
    np.testing.assert_allclose(np.vstack(together), np.vstack(alone), atol=1e-5)


# -------------------------------------------------------------------------------------------------- cache


def test_the_second_load_reuses_the_cached_export(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VPM_ONNX_CACHE", str(tmp_path / "cache"))
    exports = []
    real_export = onnx_runtime._torch_export
    monkeypatch.setattr(onnx_runtime, "_torch_export", lambda *a, **k: exports.append(a[2]) or real_export(*a, **k))

    first = load_embedder(str(tiny_clip_dir), "cpu")
    vectors = first.embed_images(onnx_runtime.probe_images(2))
    assert len(exports) == 2  # the image and the text tower
    clear_embedder_cache()
    second = load_embedder(str(tiny_clip_dir), "cpu")

    assert len(exports) == 2  # nothing exported again
    assert second is not first and second.runtime == first.runtime
    np.testing.assert_allclose(second.embed_images(onnx_runtime.probe_images(2)), vectors, atol=1e-6)
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()


def test_a_changed_model_file_gets_a_new_export(tiny_clip_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("VPM_ONNX_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, copy)
    load_embedder(str(copy), "cpu")
    clear_embedder_cache()
    config = copy / "config.json"
    config.write_text(config.read_text().replace("}", ', "note": "changed"}', 1))
    load_embedder(str(copy), "cpu")

    assert len(list((tmp_path / "cache").iterdir())) == 2


# ----------------------------------------------------------------------------------------------- fallback


def test_a_failed_export_falls_back_to_torch_and_says_why(tiny_clip_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VPM_ONNX_CACHE", str(tmp_path / "cache"))

    def broken(*_args, **_kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset 17 is not supported")

    monkeypatch.setattr(onnx_runtime, "_torch_export", broken)
    with caplog.at_level(logging.WARNING, logger="vpm.models.onnx_runtime"):
        embedder = load_embedder(str(tiny_clip_dir), "cpu")

    assert embedder.runtime == "torch"
    assert "ONNX export failed" in embedder.runtime_reason and "frobnicate" in embedder.runtime_reason
    assert any("runs on torch" in r.getMessage() and "frobnicate" in r.getMessage() for r in caplog.records)
    assert embedder.describe()["runtime_reason"] == embedder.runtime_reason
    clear_embedder_cache()
    reference = load_embedder(str(tiny_clip_dir), "cpu", runtime="torch")
    images = onnx_runtime.probe_images(2)
    np.testing.assert_allclose(embedder.embed_images(images), reference.embed_images(images), atol=1e-6)
    assert embedder.model_id == reference.model_id


def test_without_onnx_runtime_installed_the_model_still_loads(tiny_clip_dir, tmp_path, monkeypatch):
    import builtins

    monkeypatch.setenv("VPM_ONNX_CACHE", str(tmp_path / "cache"))
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    embedder = load_embedder(str(tiny_clip_dir), "cpu")

    assert embedder.runtime == "torch" and "onnxruntime" in embedder.runtime_reason
    assert embedder.embed_texts(["a mug"]).shape == (1, embedder.dim)


def test_runtime_torch_is_honoured(tiny_clip_dir):
    embedder = load_embedder(str(tiny_clip_dir), "cpu", runtime="torch")
    assert embedder.runtime == "torch" and embedder.runtime_reason == "VPM_RUNTIME=torch"


# ---------------------------------------------------------------------------------------------- model ids


def test_a_graph_below_the_parity_bar_is_not_used_under_the_models_id(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VPM_ONNX_CACHE", str(tmp_path / "cache"))
    torch_id = load_embedder(str(tiny_clip_dir), "cpu", runtime="torch").model_id
    monkeypatch.setattr(onnx_runtime, "PARITY_MIN_COSINE", 1.5)  # no graph can match: every one is "below"
    monkeypatch.setattr(onnx_runtime, "QUANTIZED_MIN_COSINE", 1.5)

    auto = load_embedder(str(tiny_clip_dir), "cpu")  # auto never runs a graph below the bar: torch, same id
    forced = load_embedder(str(tiny_clip_dir), "cpu", runtime="onnx-int8")  # forced: its own id

    assert auto.runtime == "torch" and "does not match torch" in auto.runtime_reason
    assert auto.model_id == torch_id
    assert forced.runtime.startswith("onnx-int8")
    assert forced.model_id == f"{torch_id}-onnx-int8"


def test_a_graph_that_matches_keeps_the_models_id(tiny_clip_dir):
    fast = load_embedder(str(tiny_clip_dir), "cpu")
    assert fast.runtime.startswith("onnx-")
    assert fast.model_id == load_embedder(str(tiny_clip_dir), "cpu", runtime="torch").model_id


def test_the_fast_preprocessing_gives_the_processors_pixels(tiny_clip_dir):
    embedder = load_embedder(str(tiny_clip_dir), "cpu")
    pixels = embedder._onnx.pixels
    assert pixels.fast is not None  # CLIP's processor was recognised
    images = [*onnx_runtime.probe_images(8), Image.new("RGB", (41, 900), (10, 200, 30))]
    slow = onnx_clip.ClipPixels(pixels.st_model, None)
    np.testing.assert_allclose(pixels(images), slow(images), atol=1e-4)


# ------------------------------------------------------------------------------------------------ threads


def test_threads_follow_vpm_threads_else_the_cores_present(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("VPM_THREADS", "3")
        assert onnx_runtime.configure_torch_threads() == 3 and torch.get_num_threads() == 3
        assert onnx_runtime.session_options().intra_op_num_threads == 3
        monkeypatch.delenv("VPM_THREADS")
        assert onnx_runtime.thread_count() == onnx_runtime.available_cores()
        monkeypatch.setenv("VPM_THREADS", "lots")
        assert onnx_runtime.thread_count() == onnx_runtime.available_cores()  # a typo falls back, with a warning
    finally:
        torch.set_num_threads(before)
