"""A start without torch: a model whose ONNX export is cached and checked loads from ONNX Runtime alone.

torch, transformers and sentence-transformers are imported only to export, to check parity the first time, on a
GPU, or with VPM_RUNTIME=torch (vpm/models/embeddings.py, `_from_export`). The export's manifest says which model files
it was made from, so a changed model is noticed without loading it. In this process torch is imported already,
so the tests here tell the two paths apart by what the embedder holds (no torch model at all when it was made
from the cache); the one-shot searches run in a fresh process and look at its sys.modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpm.models import onnx_runtime
from vpm.models.embeddings import (
    EfficientNetEmbedder,
    SentenceTransformerEmbedder,
    clear_embedder_cache,
    load_embedder,
)

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence_transformers", "onnx")
TEXTS = ["a red running shoe", "", "Crème brûlée 😀", "organic bananas " * 30]

# `python -m vpm ARGS` (vpm.faces.cli.main, what `python -m vpm` runs), then which heavy modules it imported.
_ONE_SHOT = f"""
import json, sys
from vpm.faces.cli import main
code = main(sys.argv[1:])
print("\\n" + json.dumps({{"code": code, "imported": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


@pytest.fixture
def backend() -> str:
    """A local catalog only: what is measured here is the model's start, not the storage."""
    return "local"


@pytest.fixture(autouse=True)
def fresh_models():
    clear_embedder_cache()
    yield
    clear_embedder_cache()


@pytest.fixture
def exports(monkeypatch) -> list[str]:
    """The graphs exported from torch, by file name, in this test."""
    made: list[str] = []
    real_export = onnx_runtime._torch_export

    def export(*args, **kwargs):
        made.append(Path(args[2]).name)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(onnx_runtime, "_torch_export", export)
    return made


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("VPM_ONNX_CACHE", str(cache))
    return cache


def made_without_torch(embedder) -> bool:
    """Whether the embedder came from its checked export alone (it holds no torch model then)."""
    if isinstance(embedder, SentenceTransformerEmbedder):
        return embedder._st_model is None
    assert isinstance(embedder, EfficientNetEmbedder)
    return embedder._torch_network is None


def one_shot(*args: str) -> tuple[dict, str]:
    """`python -m vpm ARGS` in a fresh process: (its report, its stdout before the report)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # In the test's own folder (conftest's): no stray .env from the checkout.
    result = subprocess.run([sys.executable, "-c", _ONE_SHOT, *args], cwd=os.getcwd(), env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out, _, report = result.stdout.rstrip().rpartition("\n")
    return json.loads(report), out


# ------------------------------------------------------------------------------------------------ one-shot


def add_products(product_photo, rows: list[tuple[str, int]]) -> None:
    """Products with one generated photo each, added in this process (the model loads here: the first load
    exports and checks it); the settings are the environment's, as the child process will read them."""
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    matcher = Matcher(load_settings())
    for product_id, seed in rows:
        matcher.add_product(product_photo(seed), f"{product_id}.png", name=product_id.title(), category="Things",
                            product_id=product_id)


def test_a_one_shot_search_with_a_checked_export_imports_no_torch(search_settings, product_photo, tmp_path):
    add_products(product_photo, [("mug", 1), ("bag", 2), ("lamp", 3)])
    photo = tmp_path / "mug.png"
    photo.write_bytes(product_photo(1))

    by_photo, out = one_shot("search", str(photo), "--threshold", "0", "--json")
    assert by_photo == {"code": 0, "imported": []}, out
    assert json.loads(out)["results"][0]["id"] == "mug"
    by_words, out = one_shot("search", "--text", "a striped mug", "--threshold", "0", "--json")
    assert by_words == {"code": 0, "imported": []}, out
    assert "results" in json.loads(out)  # a random tiny model: whatever it finds, it answered


def test_a_one_shot_search_with_the_built_in_model_imports_no_torch(search_settings, product_photo, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("VPM_MODEL", "efficientnet-lite0")
    add_products(product_photo, [("bag", 2)])
    photo = tmp_path / "bag.png"
    photo.write_bytes(product_photo(2))

    report, out = one_shot("search", str(photo), "--threshold", "0", "--json")

    assert report == {"code": 0, "imported": []}, out
    assert json.loads(out)["results"][0]["id"] == "bag"


@pytest.fixture(scope="module")
def transformers_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny DINOv2 and SigLIP 2 checkpoints (tests/tiny_clip.py), loaded like real ones through transformers."""
    from tiny_clip import build_tiny_dinov2, build_tiny_siglip2

    folder = tmp_path_factory.mktemp("models")
    return {"dinov2": build_tiny_dinov2(folder / "tiny-dinov2"), "siglip2": build_tiny_siglip2(folder / "tiny-siglip2")}


@pytest.mark.parametrize("which", ["dinov2", "siglip2"])
def test_a_one_shot_search_with_a_checked_transformers_export_imports_no_torch(
    which, transformers_models, search_settings, product_photo, tmp_path, monkeypatch
):
    monkeypatch.setenv("VPM_MODEL", str(transformers_models[which]))
    add_products(product_photo, [("mug", 1), ("bag", 2), ("lamp", 3)])
    photo = tmp_path / "mug.png"
    photo.write_bytes(product_photo(1))

    by_photo, out = one_shot("search", str(photo), "--threshold", "0", "--json")
    assert by_photo == {"code": 0, "imported": []}, out
    assert json.loads(out)["results"][0]["id"] == "mug"
    by_words, out = one_shot("search", "--text", "a striped mug", "--threshold", "0", "--json")
    assert by_words["imported"] == [], out  # whatever answers words, nothing loads torch
    if which == "siglip2":  # SigLIP 2 reads words: its text tower and tokenizer run without torch too
        assert by_words["code"] == 0 and "results" in json.loads(out)


def test_without_a_checked_export_the_first_start_loads_torch(search_settings, product_photo, tmp_path, own_cache,
                                                              monkeypatch):
    monkeypatch.setenv("VPM_RUNTIME", "torch")  # the catalog's vectors, made without any export
    add_products(product_photo, [("lamp", 3)])
    monkeypatch.delenv("VPM_RUNTIME")
    photo = tmp_path / "lamp.png"
    photo.write_bytes(product_photo(3))

    first, _ = one_shot("search", str(photo))  # an empty cache: torch loads, exports, checks, records
    second, _ = one_shot("search", str(photo))

    assert first["code"] == 0 and "torch" in first["imported"]
    assert second == {"code": 0, "imported": []}


def test_choosing_a_device_on_a_cpu_needs_no_torch():
    code = "import sys; from vpm.models.embeddings import resolve_device; print(resolve_device('cpu'), 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.split() == ["cpu", "False"]


# ------------------------------------------------------------------------------------------- same vectors


def test_the_embedder_from_the_cache_computes_what_the_first_load_did(tiny_clip_dir, own_cache, exports):
    images = onnx_runtime.probe_images(4)
    first = load_embedder(str(tiny_clip_dir), "cpu")
    assert not made_without_torch(first) and len(exports) == 2
    clear_embedder_cache()

    second = load_embedder(str(tiny_clip_dir), "cpu")

    assert made_without_torch(second) and len(exports) == 2
    assert second.describe() == first.describe()
    np.testing.assert_array_equal(second.embed_images(images), first.embed_images(images))
    np.testing.assert_array_equal(second.embed_texts(TEXTS), first.embed_texts(TEXTS))
    # ...and what torch computes: the cache is only trusted for a model it was checked against
    clear_embedder_cache()
    on_torch = load_embedder(str(tiny_clip_dir), "cpu", runtime="torch")
    assert on_torch.runtime == "torch" and on_torch._st_model is not None
    assert (second.embed_images(images) * on_torch.embed_images(images)).sum(axis=1).min() >= 0.999
    assert (second.embed_texts(TEXTS) * on_torch.embed_texts(TEXTS)).sum(axis=1).min() >= 0.999


def test_the_built_in_model_from_the_cache_computes_what_the_first_load_did(own_cache):
    images = onnx_runtime.probe_images(2)
    first = load_embedder("efficientnet-lite0", "cpu")
    clear_embedder_cache()

    second = load_embedder("efficientnet-lite0", "cpu")

    assert not made_without_torch(first) and made_without_torch(second)
    assert second.describe() == first.describe() and second.runtime == "onnx-fp32"
    np.testing.assert_array_equal(second.embed_images(images), first.embed_images(images))


def test_the_manifest_says_which_files_the_export_was_made_from(tiny_clip_dir, own_cache):
    load_embedder(str(tiny_clip_dir), "cpu")

    (folder,) = list(own_cache.iterdir())
    model = json.loads((folder / "manifest.json").read_text())["model"]
    assert model["kind"] == "clip" and model["needs_torch"] is None
    assert set(model["files"]) >= {"config.json", "model.safetensors", "tokenizer.json", "vocab.json"}
    weights = model["files"]["model.safetensors"]
    assert weights["size"] == (tiny_clip_dir / "model.safetensors").stat().st_size and len(weights["sha256"]) == 64
    assert model["versions"]["torch"] and model["versions"]["onnxruntime"] and model["dim"] == 32
    assert (folder / "tokenizer.json").is_file()


# --------------------------------------------------------------------------------------- a changed model


def _hub_model(model_dir: Path, cache: Path, repo_id: str) -> Path:
    """`model_dir` laid out as huggingface_hub caches a download; returns the snapshot folder."""
    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _change_a_weight(snapshot: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = snapshot / "model.safetensors"
    with safe_open(str(path), framework="np") as weights:
        tensors = {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118 - not a dict
        metadata = weights.metadata()
    tensors["visual_projection.weight"] = tensors["visual_projection.weight"] + np.float32(0.25)
    save_file(tensors, str(path), metadata=metadata)


def test_a_changed_weight_file_is_noticed_and_exported_again(tiny_clip_dir, tmp_path, monkeypatch, own_cache,
                                                             exports):
    """A hub model keeps its id whatever its files hold: only the manifest's record of them tells a change."""
    hub = tmp_path / "hf-cache"
    snapshot = _hub_model(tiny_clip_dir, hub, "acme/tiny-clip")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    images = onnx_runtime.probe_images(3)
    before = load_embedder("acme/tiny-clip", "cpu").embed_images(images)
    clear_embedder_cache()
    assert made_without_torch(load_embedder("acme/tiny-clip", "cpu")) and len(exports) == 2
    clear_embedder_cache()

    _change_a_weight(snapshot)
    changed = load_embedder("acme/tiny-clip", "cpu")

    assert not made_without_torch(changed) and len(exports) == 4  # loaded on torch, both towers exported again
    assert changed.model_id == "acme--tiny-clip" and changed.runtime.startswith("onnx-")
    after = changed.embed_images(images)
    assert not np.allclose(after, before, atol=1e-3)
    clear_embedder_cache()
    again = load_embedder("acme/tiny-clip", "cpu")
    assert made_without_torch(again) and len(exports) == 4
    np.testing.assert_array_equal(again.embed_images(images), after)


def test_a_file_touched_but_not_changed_still_starts_without_torch(tiny_clip_dir, tmp_path, own_cache, exports):
    model = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, model)
    load_embedder(str(model), "cpu")
    clear_embedder_cache()
    stat = (model / "config.json").stat()
    os.utime(model / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns - 60_000_000_000))  # a minute older

    embedder = load_embedder(str(model), "cpu")

    assert made_without_torch(embedder) and len(exports) == 2
    (folder,) = list(own_cache.iterdir())
    files = json.loads((folder / "manifest.json").read_text())["model"]["files"]
    assert files["config.json"]["mtime_ns"] == stat.st_mtime_ns - 60_000_000_000  # recorded: no hashing next time


def test_an_export_whose_checks_are_not_recorded_is_not_trusted(tiny_clip_dir, own_cache, exports):
    load_embedder(str(tiny_clip_dir), "cpu")
    clear_embedder_cache()
    (folder,) = list(own_cache.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["model"]  # e.g. a cache written before the manifest said which files it came from
    (folder / "manifest.json").write_text(json.dumps(manifest))

    embedder = load_embedder(str(tiny_clip_dir), "cpu")

    assert not made_without_torch(embedder) and len(exports) == 2  # torch checks it again; the graphs are reused
    assert "model" in json.loads((folder / "manifest.json").read_text())
    clear_embedder_cache()
    assert made_without_torch(load_embedder(str(tiny_clip_dir), "cpu"))


def test_torch_is_used_when_asked_for(tiny_clip_dir, own_cache):
    load_embedder(str(tiny_clip_dir), "cpu")
    clear_embedder_cache()

    on_torch = load_embedder(str(tiny_clip_dir), "cpu", runtime="torch")

    assert on_torch.runtime == "torch" and not made_without_torch(on_torch)


def test_the_torch_model_is_still_there_for_whoever_asks(tiny_clip_dir, own_cache):
    load_embedder(str(tiny_clip_dir), "cpu")
    clear_embedder_cache()
    embedder = load_embedder(str(tiny_clip_dir), "cpu")
    assert made_without_torch(embedder)

    assert embedder._model.supports("image")  # loaded now, on demand
    assert embedder._onnx.pixels.st_model is embedder._model
