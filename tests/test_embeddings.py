"""Embedders: the tiny CLIP through the real sentence-transformers path, and the offline fallback.

No test reaches the network: conftest sets HF_HUB_OFFLINE, and a guard below fails any connection or name
lookup that would leave this machine (the hub probe is pointed at a closed loopback port instead).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vpm.core.images import MAX_ASPECT_RATIO
from vpm.models.embeddings import (
    DEFAULT_DESCRIPTOR,
    LEGACY_DESCRIPTOR,
    Descriptor,
    EfficientNetEmbedder,
    EmbeddingError,
    SentenceTransformerEmbedder,
    clear_embedder_cache,
    load_configured_embedder,
    load_embedder,
    model_slug,
    rmac_regions,
)

from hostile_images import HOSTILE_IMAGES, guard_resizes
from tiny_clip import IMAGE_SIZE as TINY_CLIP_INPUT
from tiny_clip import build_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host: object) -> bool:
    return isinstance(host, str) and (host in _LOOPBACK_NAMES or host.startswith("127."))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail (and record) any attempt to reach a host other than this machine."""
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
            attempts.append(address)
            raise OSError(f"test tried to reach {address}")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            attempts.append(host)
            raise socket.gaierror(f"test tried to look up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert not attempts, f"a test tried to reach the network: {attempts}"


@pytest.fixture(autouse=True)
def fresh_models(monkeypatch, tmp_path):
    """Each test loads its own models, from an empty Hugging Face cache unless it fills one."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("SENTENCE_TRANSFORMERS_HOME", raising=False)
    clear_embedder_cache()
    yield
    clear_embedder_cache()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """The tiny CLIP folder (tests/tiny_clip.py), loaded below exactly like a real CLIP."""
    import torch

    # One thread: the tiny model gains nothing from more, and on a busy machine spinning threads cost ~20x.
    torch.set_num_threads(1)
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def clip(clip_dir) -> SentenceTransformerEmbedder:
    embedder = load_embedder(str(clip_dir), device="cpu")
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return embedder


@pytest.fixture
def efficientnet() -> EfficientNetEmbedder:
    embedder = load_embedder("efficientnet-lite0", device="cpu")
    assert isinstance(embedder, EfficientNetEmbedder)
    return embedder


@pytest.fixture
def legacy_efficientnet(efficientnet) -> EfficientNetEmbedder:
    """The built-in model with the descriptor it had before issue 13 (a 224 px centre crop, averaged)."""
    return EfficientNetEmbedder(efficientnet._network, "cpu", descriptor=LEGACY_DESCRIPTOR)


def _closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A reproducible picture of coloured shapes; different seeds give different pictures."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def _unit_rows(vectors: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- import cost ------------------------------------------------------------------------------------------


def test_importing_embeddings_does_not_import_torch():
    code = (
        "import sys, vpm.models.embeddings\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- the tiny CLIP, loaded like the real model ------------------------------------------------------------


def test_tiny_clip_build_is_idempotent(clip_dir):
    weights = clip_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_clip(clip_dir) == clip_dir
    assert weights.stat().st_mtime_ns == before
    assert sum(p.stat().st_size for p in clip_dir.iterdir()) < 1_000_000


def test_tiny_clip_never_builds_over_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds other files"):
        build_tiny_clip(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_tiny_clip_loads_through_sentence_transformers(clip, clip_dir):
    assert clip.supports_text
    assert clip.dim == 32
    assert clip.fallback_reason is None
    assert clip.device == "cpu"
    assert clip.model_id.startswith("tiny-clip-")
    assert clip.display_name == "tiny-clip"


def test_image_embeddings_have_the_right_shape_and_unit_norm(clip):
    images = [_scene(i) for i in range(3)] + [Image.new("RGB", (7, 300), "white")]
    vectors = clip.embed_images(images)
    assert vectors.shape == (4, 32)
    assert vectors.dtype == np.float32
    assert _unit_rows(vectors)


def test_image_embeddings_are_deterministic_across_loads_and_builds(clip, tmp_path):
    images = [_scene(1), _scene(2)]
    first = clip.embed_images(images)
    assert np.array_equal(first, clip.embed_images(images))

    # A second build of the tiny model is the same model: same vectors, and the same cache key.
    rebuilt_dir = build_tiny_clip(tmp_path / "again" / "tiny-clip")
    rebuilt = load_embedder(str(rebuilt_dir), device="cpu")
    assert rebuilt is not clip
    np.testing.assert_allclose(rebuilt.embed_images(images), first, atol=1e-6)
    assert rebuilt.model_id == clip.model_id


def test_same_image_is_identical_and_different_images_are_not(clip):
    a, b = _scene(10), _scene(11)
    vectors = clip.embed_images([a, a.copy(), b])
    assert vectors[0] @ vectors[1] == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] @ vectors[2] < 0.9999


@pytest.mark.parametrize("model", ["tiny-clip", "efficientnet-lite0"])
def test_a_batch_matches_the_same_images_one_by_one(model, clip_dir):
    embedder = load_embedder(str(clip_dir) if model == "tiny-clip" else model, device="cpu")
    images = [_scene(20 + i, size=(200 + 30 * i, 180)) for i in range(5)]
    batched = embedder.embed_images(images, batch_size=5)
    singles = np.vstack([embedder.embed_images([img], batch_size=1) for img in images])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_progress_counts_up_to_the_total(clip):
    calls: list[tuple[int, int]] = []
    images = [_scene(i) for i in range(7)]
    vectors = clip.embed_images(images, batch_size=3, progress=lambda *counts: calls.append(counts))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert vectors.shape == (7, 32)


def test_no_images_gives_an_empty_matrix_and_no_progress(clip):
    calls: list[tuple[int, int]] = []
    vectors = clip.embed_images([], progress=lambda d, t: calls.append((d, t)))
    assert vectors.shape == (0, 32)
    assert calls == []


def test_non_rgb_images_are_converted_and_non_images_are_refused(clip):
    rgb = _scene(5)
    grey = rgb.convert("L")
    np.testing.assert_allclose(
        clip.embed_images([grey]), clip.embed_images([grey.convert("RGB")]), atol=1e-6
    )
    with pytest.raises(EmbeddingError, match="image #1 is a str"):
        clip.embed_images([rgb, "photo.jpg"])
    with pytest.raises(EmbeddingError, match="batch_size"):
        clip.embed_images([rgb], batch_size=0)


def test_text_embeddings_are_unit_norm_deterministic_and_distinct(clip):
    texts = ["a red running shoe", "a blue ceramic mug", "a red running shoe"]
    vectors = clip.embed_texts(texts)
    assert vectors.shape == (3, 32)
    assert _unit_rows(vectors)
    assert vectors[0] @ vectors[2] == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] @ vectors[1] < 0.9999
    np.testing.assert_array_equal(vectors, clip.embed_texts(texts))
    assert clip.embed_texts([]).shape == (0, 32)


def test_a_long_text_query_is_truncated_not_an_error(clip):
    vectors = clip.embed_texts(["a very long product description " * 40])
    assert vectors.shape == (1, 32)
    assert _unit_rows(vectors)


def test_the_same_model_and_device_load_once(clip_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    first = load_embedder(str(clip_dir), device="cpu")
    assert load_embedder(str(clip_dir), device="cpu") is first
    assert load_embedder(str(clip_dir), device="auto") is first  # auto is cpu here: no second copy


# --- a hub model in the local cache -----------------------------------------------------------------------


def _put_in_hf_cache(model_dir: Path, cache: Path, repo_id: str) -> None:
    """Lay `model_dir` out the way huggingface_hub caches a downloaded model."""
    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


_LOAD_WITH_SOCKETS_RECORDED = """
import json, socket, sys
attempts = []
def refuse(sock, address):
    attempts.append(repr(address))
    raise OSError("connection attempted")
socket.socket.connect = refuse
from vpm.models.embeddings import load_embedder
embedder = load_embedder(sys.argv[1], device="cpu")
print(json.dumps({**embedder.describe(), "attempts": attempts}))
"""


def test_a_cached_hub_model_loads_without_touching_the_network(clip_dir, tmp_path):
    cache = tmp_path / "hf-cache"
    _put_in_hf_cache(clip_dir, cache, "acme/tiny-clip")
    # A fresh process that is *not* offline (huggingface_hub reads that once, at import), whose every
    # connection attempt is recorded and refused: a cached model must load without making one.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{_closed_loopback_port()}")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITH_SOCKETS_RECORDED, "acme/tiny-clip"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["attempts"] == []
    assert loaded["fallback_reason"] is None
    assert loaded["supports_text"] is True
    assert loaded["model_id"] == "acme--tiny-clip"


# --- the offline fallback ---------------------------------------------------------------------------------


def test_an_uncached_hub_model_falls_back_when_offline(caplog):
    with caplog.at_level(logging.WARNING, logger="vpm.models.embeddings"):
        embedder = load_embedder("clip-ViT-B-32", device="cpu")
    assert isinstance(embedder, EfficientNetEmbedder)
    assert embedder.model_id == DEFAULT_DESCRIPTOR.model_id
    assert embedder.dim == 1280
    assert embedder.supports_text is False
    assert "clip-ViT-B-32" in embedder.fallback_reason
    assert "HF_HUB_OFFLINE" in embedder.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(embedder.fallback_reason in r.getMessage() for r in warnings)
    assert embedder.describe()["fallback_reason"] == embedder.fallback_reason


def test_an_uncached_hub_model_falls_back_when_the_hub_is_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    port = _closed_loopback_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    embedder = load_embedder("openai/clip-vit-base-patch32", device="cpu")
    assert isinstance(embedder, EfficientNetEmbedder)
    assert "openai/clip-vit-base-patch32" in embedder.fallback_reason
    assert f"127.0.0.1:{port}" in embedder.fallback_reason


def test_text_search_on_the_image_only_model_is_a_clear_error(efficientnet):
    with pytest.raises(EmbeddingError, match=r"images only.*text search is not available"):
        efficientnet.embed_texts(["red shoe"])


def test_vpm_model_can_select_the_built_in_model_directly(monkeypatch):
    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")
    monkeypatch.setenv("VPM_DEVICE", "cpu")
    embedder = load_configured_embedder()
    assert isinstance(embedder, EfficientNetEmbedder)
    assert embedder.fallback_reason is None
    assert embedder.model_id == DEFAULT_DESCRIPTOR.model_id


def test_a_folder_that_is_not_a_model_falls_back_with_the_reason(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("just some notes")
    embedder = load_embedder(str(folder), device="cpu")
    assert isinstance(embedder, EfficientNetEmbedder)
    assert str(folder) in embedder.fallback_reason
    assert "does not hold a usable model" in embedder.fallback_reason


def test_a_missing_model_folder_falls_back_with_the_reason(tmp_path):
    missing = tmp_path / "models" / "clip-typo"
    embedder = load_embedder(str(missing), device="cpu")
    assert isinstance(embedder, EfficientNetEmbedder)
    assert f"{missing} does not exist" in embedder.fallback_reason


def test_the_built_in_model_sees_a_rescaled_crop_as_the_same_picture(efficientnet):
    original = _scene(42, size=(400, 300))
    crop = original.crop((20, 15, 380, 285)).resize((270, 202), Image.Resampling.BILINEAR)
    others = [_scene(seed, size=(400, 300)) for seed in (43, 44, 45)]
    vectors = efficientnet.embed_images([original, crop, *others])
    assert _unit_rows(vectors)
    to_crop = vectors[0] @ vectors[1]
    to_others = vectors[2:] @ vectors[0]
    assert to_crop > to_others.max()


# --- bounded preprocessing (issue 9) --------------------------------------------------------------------------

# Ordinary shapes, up to exactly the aspect limit decode_image accepts (2000×100 and 57×1140 are 20:1).
ORDINARY_SIZES = [(320, 240), (240, 320), (224, 224), (33, 17), (2000, 100), (57, 1140), (4000, 3000)]


def _efficientnet_pixels_before_the_bound(image: Image.Image) -> np.ndarray:
    """EfficientNetEmbedder._pixels as it was before issue 9, to prove ordinary images embed exactly as before
    with the descriptor of that time (LEGACY_DESCRIPTOR)."""
    size = LEGACY_DESCRIPTOR.short_side
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - 0.5) / 0.5).transpose(2, 0, 1)


def _upscaled_bound(input_size: int) -> int:
    """The most pixels a short-side-to-`input_size` resize may make once the aspect ratio is bounded."""
    return input_size * (input_size * MAX_ASPECT_RATIO + 1)  # + 1: rounding of the long side


@pytest.mark.parametrize("size", ORDINARY_SIZES)
def test_the_legacy_descriptors_preprocessing_of_ordinary_images_is_unchanged(legacy_efficientnet, size):
    image = _scene(size[0] * 7 + size[1], size=size) if min(size) > 40 else Image.new("RGB", size, (9, 99, 199))
    np.testing.assert_array_equal(legacy_efficientnet._pixels(image), _efficientnet_pixels_before_the_bound(image))


@pytest.mark.parametrize(
    ("size", "shape"),
    [((348, 348), (384, 384)), ((640, 480), (384, 512)), ((480, 640), (512, 384)), ((96, 96), (384, 384)),
     ((1024, 208), (160, 768)), ((3000, 100), (32, 768)), ((4000, 3000), (384, 512))],
)
def test_the_built_in_model_keeps_the_aspect_at_multiples_of_32_within_768(efficientnet, size, shape):
    pixels = efficientnet._pixels(Image.new("RGB", size, (9, 99, 199)))

    assert pixels.shape == (3, *shape)


def test_the_descriptor_is_in_the_model_id_so_a_new_one_re_embeds():
    assert LEGACY_DESCRIPTOR.model_id == "efficientnet-lite0"  # the vectors made before issue 13
    assert DEFAULT_DESCRIPTOR.model_id != LEGACY_DESCRIPTOR.model_id
    assert DEFAULT_DESCRIPTOR.model_id == "efficientnet-lite0-rmac384"  # flip measured no gain: left out
    assert Descriptor(pooling="avg", flip=False).model_id == "efficientnet-lite0-avg384"


def test_rmac_regions_cover_the_map_at_three_scales():
    regions = rmac_regions(12, 16)

    assert regions[0] == (0, 0, 12, 16)  # the whole map first
    assert {side for _t, _l, side, _s in regions[1:]} == {12, 8, 6}
    assert all(top + h <= 12 and left + w <= 16 for top, left, h, w in regions)


def test_flip_makes_a_photo_and_its_mirror_one_vector(efficientnet):
    flipping = EfficientNetEmbedder(efficientnet._network, "cpu", descriptor=Descriptor(flip=True))
    image = _scene(5, size=(200, 160))
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    a, b = flipping.embed_images([image, mirror])

    assert flipping.model_id == "efficientnet-lite0-rmac384-flip"
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_images_of_different_shapes_in_one_batch_embed_as_they_do_alone(efficientnet):
    images = [_scene(1, size=(300, 200)), _scene(2, size=(200, 300)), _scene(3, size=(300, 200))]

    together = efficientnet.embed_images(images)
    alone = np.vstack([efficientnet.embed_images([image]) for image in images])

    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_clip_vectors_of_ordinary_images_are_what_sentence_transformers_gives_unbounded(clip_dir):
    # Exact equality with sentence-transformers is torch's; ONNX Runtime's parity is tests/test_onnx_runtime.py's.
    clip = load_embedder(str(clip_dir), device="cpu", runtime="torch")
    images = [_scene(i, size=size) if min(size) > 40 else Image.new("RGB", size, (9, 99, 199))
              for i, size in enumerate(ORDINARY_SIZES)]
    unbounded = clip._model.encode(images, convert_to_numpy=True, show_progress_bar=False)  # no aspect bound

    vectors = clip.embed_images(images)

    expected = unbounded / np.linalg.norm(unbounded, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_the_built_in_models_preprocessing_of_a_strip_stays_bounded(efficientnet, hostile, monkeypatch):
    """Called directly, without decode_image: the resize must be bounded on its own (unbounded: 3-30 GB)."""
    d = DEFAULT_DESCRIPTOR
    sizes = guard_resizes(monkeypatch, max(_upscaled_bound(d.short_side), d.max_long_side**2))

    pixels = efficientnet._pixels(hostile.pil())

    assert pixels.shape[1] <= d.max_long_side and pixels.shape[2] <= d.max_long_side
    assert sizes  # the guard saw the resize


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES, ids=lambda h: h.filename)
def test_clip_preprocessing_of_a_strip_stays_bounded(clip, hostile, monkeypatch):
    """CLIP's processor scales the short side up before cropping: the embedder must hand it a bounded image."""
    sizes = guard_resizes(monkeypatch, _upscaled_bound(TINY_CLIP_INPUT))

    vectors = clip.embed_images([hostile.pil()])

    assert vectors.shape == (1, 32) and _unit_rows(vectors)
    assert sizes  # the guard saw the processor's resize


def test_an_invalid_device_is_a_clear_error():
    with pytest.raises(EmbeddingError, match="VPM_DEVICE='gpu0'"):
        load_embedder("efficientnet-lite0", device="gpu0")


def test_an_unavailable_cuda_device_runs_on_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_embedder("efficientnet-lite0", device="cuda").device == "cpu"
    assert load_embedder("efficientnet-lite0", device="auto").device == "cpu"


# --- cache keys -------------------------------------------------------------------------------------------


def test_model_slugs_are_stable_and_safe_storage_keys(clip_dir, tmp_path):
    from vpm.core.storage import validate_key

    assert model_slug("clip-ViT-B-32") == "clip-ViT-B-32"
    assert model_slug("sentence-transformers/clip-ViT-B-32") == "clip-ViT-B-32"
    assert model_slug("openai/clip-vit-base-patch32") == "openai--clip-vit-base-patch32"
    assert model_slug("efficientnet-lite0") == DEFAULT_DESCRIPTOR.model_id  # the descriptor it computes
    for name in ("clip-ViT-B-32", "odd name/..", str(clip_dir)):
        validate_key(f"metadata/embeddings/{model_slug(name)}.npy")


def test_two_different_model_folders_never_share_a_slug(clip_dir, tmp_path):
    copy = tmp_path / "a" / "tiny-clip"
    shutil.copytree(clip_dir, copy)
    assert model_slug(str(copy)) == model_slug(str(clip_dir))  # same weights: the cache still fits

    changed = tmp_path / "b" / "tiny-clip"
    shutil.copytree(clip_dir, changed)
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_slug(str(changed)) != model_slug(str(clip_dir))
    assert model_slug(str(changed)).startswith("tiny-clip-")

