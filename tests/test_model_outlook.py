"""Which model will run, said before it loads (vpm.models.model_outlook): instant, honest, never a path."""

from __future__ import annotations

import threading

import pytest

from vpm.core.config import load_settings
from vpm.models import embeddings, model_outlook

from fakes import ColourMeanEmbedder


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache unless a test fills it
    model_outlook.forget_hub_probe()
    yield
    model_outlook.forget_hub_probe()


def outlook(model: str, **kwargs):
    return model_outlook.outlook(load_settings(vpm_model=model), **kwargs)


def cache(tmp_path, repo="sentence-transformers/clip-ViT-B-32"):
    folder = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)


def test_a_cached_model_is_ready_and_reads_words(tmp_path):
    cache(tmp_path)
    seen = outlook("clip-ViT-B-32")
    assert (seen.state, seen.model_id, seen.words) == ("ready", "clip-ViT-B-32", True)
    assert seen.line == ("clip-ViT-B-32 is on this machine and loads in a few seconds on the first search: search "
                         "by photo or by words.")


def built_in_id() -> str:
    """The id the loaded built-in model gives its vectors (its class, without loading the network)."""
    return embeddings.EfficientNetEmbedder(None, "cpu").model_id


def test_offline_without_the_model_the_built_in_one_runs_and_no_path_is_shown(tmp_path):
    seen = outlook("clip-ViT-B-32")  # HF_HUB_OFFLINE is set for every test
    assert (seen.state, seen.model_id, seen.words) == ("fallback", built_in_id(), False)
    assert seen.fallback
    assert "built-in image model (EfficientNet-Lite0)" in seen.line and "search by words needs CLIP" in seen.line
    assert str(tmp_path) not in seen.line


def test_a_model_folder_is_named_by_its_last_part_never_its_path(tiny_clip_dir, tmp_path):
    seen = outlook(str(tiny_clip_dir))
    assert seen.state == "ready" and seen.model_id == embeddings.model_slug(str(tiny_clip_dir))
    assert seen.line.startswith("tiny-clip is on this machine") and str(tiny_clip_dir.parent) not in seen.line
    missing = outlook(str(tmp_path / "no-such-model"))
    assert missing.state == "fallback" and str(tmp_path) not in missing.line


def test_the_built_in_model_on_purpose_needs_nothing():
    seen = outlook("efficientnet-lite0")
    assert (seen.state, seen.words) == ("ready", False) and seen.fallback


def test_before_the_load_the_built_in_model_is_named_by_the_id_its_vectors_carry():
    """Counting vectors before the first search (health, Home, consistency) must look in the table the loaded
    built-in model writes, descriptor suffix and all: else a fully indexed catalog reads as "1 of 1 to embed"."""
    assert built_in_id() != embeddings.FALLBACK_MODEL  # the descriptor makes it a different id
    assert outlook("efficientnet-lite0").model_id == built_in_id()
    assert outlook("clip-ViT-B-32").model_id == built_in_id()  # the offline fallback: the same model


def test_a_loaded_model_says_what_runs():
    class Fallback(ColourMeanEmbedder):
        model_id = "efficientnet-lite0"
        fallback_reason = "'clip-ViT-B-32' is not in the local Hugging Face cache (/root/.cache/huggingface/hub)"

    ran = outlook("clip-ViT-B-32", loaded=Fallback())
    assert ran.state == "loaded" and ran.fallback and "/root" not in ran.line
    fine = outlook("efficientnet-lite0", loaded=ColourMeanEmbedder())
    assert fine.line == "fake colour embedder is ready: search by photo (this model does not read words)."


def test_online_the_hub_is_asked_in_the_background_and_never_waited_for(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    answer = threading.Event()
    asked = []

    def probe(timeout=3.0):
        asked.append(1)
        answer.wait(10)
        return None  # the hub answers

    monkeypatch.setattr(embeddings, "_hub_unreachable", probe)
    first = outlook("clip-ViT-B-32")
    assert first.state == "checking" and first.line.endswith("checking whether it can be downloaded…")
    answer.set()
    model_outlook._probe["thread"].join(5)
    later = outlook("clip-ViT-B-32")
    assert later.state == "download" and "about 600 MB, once" in later.line
    assert len(asked) == 1  # asked once, the answer kept


def test_online_an_unreachable_hub_means_the_built_in_model(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(embeddings, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443: no answer")
    outlook("clip-ViT-B-32")
    model_outlook._probe["thread"].join(5)
    seen = outlook("clip-ViT-B-32")
    assert seen.state == "fallback" and "huggingface.co" not in seen.line


# ------------------------------------------------------------------------------------------- the sidebar's line

BUILT_IN_LINE = "EfficientNet-Lite0 (built-in) · photos only · no download needed"


@pytest.mark.parametrize("configured, reason", [
    ("efficientnet-lite0", None),  # on purpose
    ("clip-ViT-B-32", "'clip-ViT-B-32' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),  # fallback
])
def test_the_sidebar_names_the_built_in_model_the_same_plain_way_before_and_after_it_loads(configured, reason):
    from vpm.core.matcher import Matcher
    from vpm.faces.webapp import model_summary

    settings = load_settings(vpm_model=configured)
    matcher = Matcher(settings, load_embedder=lambda: embeddings.EfficientNetEmbedder(None, "cpu", reason))
    before = model_summary(settings, matcher)
    matcher.embedder  # the first search loads it
    after = model_summary(settings, matcher)

    assert before == after == BUILT_IN_LINE.replace("-", "\\-").replace("(", "\\(").replace(")", "\\)")
    assert outlook(configured, loaded=matcher.embedder).summary == BUILT_IN_LINE
    for jargon in ("px", "pooling", "R-MAC", "ImageNet", "images only"):  # "only" once
        assert jargon not in after


def test_the_built_in_model_loaded_on_purpose_is_described_as_before_it_loaded():
    loaded = outlook("efficientnet-lite0", loaded=embeddings.EfficientNetEmbedder(None, "cpu"))
    assert loaded.line == outlook("efficientnet-lite0").line
    assert "R-MAC" not in loaded.line and "px" not in loaded.line


def test_the_sidebar_line_of_other_models_says_what_the_first_search_costs(tmp_path):
    cache(tmp_path)
    assert outlook("clip-ViT-B-32").summary == "clip-ViT-B-32 · loads on first search"
    assert outlook("clip-ViT-B-32", loaded=ColourMeanEmbedder()).summary == "fake colour embedder · photos only"


# ------------------------------------------------------------------------------------------- words, when they cannot run


def reason_for(model: str) -> str:
    """The fallback reason vpm.models.embeddings really gives for `model` here (it fails before importing any model)."""
    with pytest.raises(embeddings._ModelUnavailable) as failed:
        embeddings._load_sentence_transformer(model, "cpu")
    return str(failed.value)


def fallback_for(model: str):
    return embeddings.EfficientNetEmbedder(None, "cpu", reason_for(model))


def test_words_off_offline_names_the_real_cause_and_never_asks_for_what_is_set(tmp_path):
    settings = load_settings(vpm_model="clip-ViT-B-32")  # HF_HUB_OFFLINE is set for every test

    message = model_outlook.words_unavailable(settings, fallback_for("clip-ViT-B-32"))

    assert message.startswith("search by words is off: clip-ViT-B-32 is not on this machine and cannot be "
                              "downloaded, because HF_HUB_OFFLINE is set, so the built-in image model "
                              "(EfficientNet-Lite0) is running in its place")
    assert "search with a photo instead" in message and "unset HF_HUB_OFFLINE" in message
    assert "set VPM_MODEL to a CLIP model" not in message  # it is one already
    assert str(tmp_path) not in message and "/" not in message.replace("and/or", "")  # no path


def test_words_off_when_the_hub_cannot_be_reached_says_so_without_the_host(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(embeddings, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443: no answer")
    settings = load_settings(vpm_model="clip-ViT-B-32")

    message = model_outlook.words_unavailable(settings, fallback_for("clip-ViT-B-32"))

    assert "clip-ViT-B-32 could not be downloaded: the Hugging Face hub cannot be reached" in message
    assert "reads photos only" in message and "about 600 MB" in message
    assert "huggingface.co:443" not in message


def test_words_off_with_a_missing_model_folder_names_the_folder_not_its_path(tmp_path):
    folder = tmp_path / "models" / "my-clip"
    settings = load_settings(vpm_model=str(folder))

    message = model_outlook.words_unavailable(settings, fallback_for(str(folder)))

    assert message.startswith("search by words is off: my-clip is not on this machine (VPM_MODEL names a folder "
                              "that does not exist)")
    assert str(tmp_path) not in message


def test_words_with_the_built_in_model_on_purpose_point_at_clip():
    settings = load_settings(vpm_model="efficientnet-lite0")
    message = model_outlook.words_unavailable(settings, embeddings.EfficientNetEmbedder(None, "cpu"))
    assert "reads photos only" in message and "set VPM_MODEL to a CLIP model such as clip-ViT-B-32" in message


def test_words_run_with_a_clip_model(tiny_clip):
    assert model_outlook.words_unavailable(load_settings(), tiny_clip) is None
