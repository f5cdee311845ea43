"""Each embedder carries what is particular to its kind (vpm/models/embedder_base.py): whether it reads words, its default
cosines and its ONNX export. The runtime asks the embedder, never which class it is."""

from __future__ import annotations

import pytest

from vpm.models import onnx_runtime
from vpm.models.builtin_model import BUILT_IN_THRESHOLDS, EfficientNetEmbedder
from vpm.models.clip_model import CLIP_THRESHOLDS

from fakes import ColourMeanEmbedder


class ExportingEmbedder(ColourMeanEmbedder):
    """A model of a kind the runtime has never heard of, with an export hook of its own."""

    def __init__(self) -> None:
        self.exported: list[str] = []

    def export_onnx(self, runtime: str) -> None:
        self.exported.append(runtime)
        self.runtime, self.runtime_reason = "onnx-fp32", None


def test_the_runtime_runs_any_embedders_own_export():
    embedder = ExportingEmbedder()

    onnx_runtime.accelerate(embedder, "auto")

    assert embedder.exported == ["auto"]
    assert (embedder.runtime, embedder.runtime_reason) == ("onnx-fp32", None)


def test_an_embedder_without_an_export_stays_on_torch_and_says_why():
    embedder = ColourMeanEmbedder()

    onnx_runtime.accelerate(embedder, "auto")

    assert embedder.runtime == "torch"
    assert embedder.runtime_reason == "no ONNX export for ColourMeanEmbedder"


def test_each_kind_carries_its_default_cosines(tiny_clip):
    assert EfficientNetEmbedder(None, "cpu").thresholds == BUILT_IN_THRESHOLDS
    assert "clip" in tiny_clip.model_id.lower() and tiny_clip.thresholds == CLIP_THRESHOLDS
    assert ColourMeanEmbedder().thresholds.text == pytest.approx(0.2)  # a kind with none of its own


def test_the_text_threshold_a_search_uses_is_the_models_own(matcher):
    """The threshold a words search hides results below is the one the model carries."""
    assert matcher.default_threshold("text") == pytest.approx(matcher.embedder.thresholds.text)
