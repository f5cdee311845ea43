"""ONNX Runtime for the embedders' networks: exported once from the loaded torch model, cached, checked for parity.

`accelerate(embedder)` (called by vpm.models.embeddings when a model loads) asks the embedder to move the expensive part of
itself onto ONNX Runtime (its `export_onnx`), and leaves it on torch, with the reason logged and in
`embedder.runtime_reason`, whenever that cannot be done faithfully. Each kind of model carries its own export; this
module holds what they share (the cache, the manifests, the parity check, the sessions) and knows networks only,
never which embedder it serves:

- CLIP through sentence-transformers (vpm/models/onnx_clip.py): its image tower and its text tower.
- DINOv2 and SigLIP 2 through transformers (vpm/models/onnx_hf.py): the image tower, and SigLIP's text tower.
- EfficientNet-Lite0, the offline model (vpm/models/onnx_builtin.py): only the network call, a float32 NCHW batch of any
  height and width -> its feature maps. Preprocessing and pooling stay in vpm.models.builtin_model, in numpy and Pillow.
- The transformers models' image processors and tokenizers are copied in numpy and the `tokenizers` library where
  the copy gives their own pixels and tokens (vpm/models/onnx_preprocess.py), so a start from the cache needs no torch.

Every export lands in a cache folder (VPM_ONNX_CACHE, default ~/.cache/vpm/onnx) named after the model's file
hashes and the versions of torch, onnx, ONNX Runtime and the model libraries, so a second load reuses it and a
changed model never does. Each exported network is checked against torch on probe inputs when it is made: the
fp32 graph must give vectors with cosine >= PARITY_MIN_COSINE to torch's, and the dynamically quantized int8
graph (MatMul/Gemm weights; transformers only) is kept only when it clears the bar with a margin
(QUANTIZED_MIN_COSINE). The result is kept beside the graph, so a later load trusts the cache without running
torch again.

A start without torch: once every check passed, the folder's manifest also says which model it was made from
(each file's size, modification time and SHA-256; the versions; the vector size; for CLIP, DINOv2 and SigLIP the preprocessing and
tokenizer settings, the tokenizer itself saved as tokenizer.json and checked to give the model's own token ids).
`find_checked_export` (asked by vpm.models.embeddings before anything imports torch) finds that manifest by the model's id
and its files (a file whose size or time changed is hashed again; a changed file means no match); the embedder of
the kind the manifest records makes itself from it (its `from_export`) with ONNX Runtime, `tokenizers` and numpy
alone. Without such a manifest (no export yet, a changed model, parity not checked, a GPU, VPM_RUNTIME=torch) the
model loads on torch and `accelerate` runs as above.

Model ids: a network that passed the bar computes what torch computes, so its vectors keep the model's id and
mix with torch's. A variant forced below the bar (VPM_RUNTIME=onnx-int8 when int8 failed) gets an id of its own.

Threads: torch and ONNX Runtime each get VPM_THREADS threads (default: the cores this process may use). The API
does not run model calls side by side (it batches concurrent searches into one call, see vpm.core.batching), so one
call may use every core.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
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

from vpm.models.model_files import model_file_names  # noqa: F401 - what the exports record a model's files by

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
# What else an export depends on: the exporter, the graph checker, and the code that builds the networks, their
# preprocessing and the tokenizer.
_VERSIONED = ("torch", "onnx", "transformers", "sentence-transformers", "tokenizers", "efficientnet-lite-pytorch")
# A file modified this close to when its time was recorded might change again within the same clock tick: its time
# is not recorded, so the next start compares its hash instead (git's "racy" rule).
_RACY_NS = 2_000_000_000


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


@functools.cache
def versions() -> dict[str, str]:
    """The toolchain an export depends on, from package metadata (importing torch to ask would cost seconds)."""
    import onnxruntime  # its distribution has several names (onnxruntime-gpu, -openvino); imported anyway to run

    found = {"onnxruntime": onnxruntime.__version__, "recipe": str(EXPORT_RECIPE), "opset": str(OPSET)}
    for package in _VERSIONED:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "none"
    return found


def cache_key(name: str, file_digest: str) -> str:
    """A folder name for one model: readable name + a digest of its files and the toolchain's versions."""
    digest = hashlib.sha256(json.dumps({"files": file_digest, **versions()}, sort_keys=True).encode())
    return f"{_safe_name(name)}-{digest.hexdigest()[:16]}"


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")[:60] or "model"


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


# ---------------------------------------------------------------------------------------- model identity


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(root: Path, relatives: Sequence[str], known: dict[str, Any] | None = None) -> dict[str, Any]:
    """{relative path: {size, mtime_ns, sha256}} of a model's files, as a manifest records them. A hash in `known`
    (an older record) is reused when the size and time still match; a time too recent to trust is left out."""
    files: dict[str, Any] = {}
    for relative in sorted(relatives):
        stat = (root / relative).stat()
        old = (known or {}).get(relative) or {}
        same = old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns
        sha = old["sha256"] if same and old.get("sha256") else _sha256(root / relative)
        racy = time.time_ns() - stat.st_mtime_ns < _RACY_NS
        files[relative] = {"size": stat.st_size, "mtime_ns": None if racy else stat.st_mtime_ns, "sha256": sha}
    return files


def _same_files(root: Path, relatives: Sequence[str], recorded: dict[str, Any]) -> tuple[bool, bool]:
    """(whether the files under `root` are those `recorded`, whether a time changed with the content the same).
    A file whose size and time match is trusted as it is; one whose time differs is hashed again."""
    if sorted(relatives) != sorted(recorded):
        return False, False
    retimed = False
    for relative in relatives:
        stat, entry = (root / relative).stat(), recorded[relative]
        if stat.st_size != entry.get("size"):
            return False, False
        if stat.st_mtime_ns != entry.get("mtime_ns"):
            if _sha256(root / relative) != entry.get("sha256"):
                return False, False
            retimed = True
    return True, retimed


def find_checked_export(model_id: str, files_root: Path, relatives: Sequence[str]
                        ) -> tuple[Path, dict[str, Any]] | None:
    """The cache folder and manifest of `model_id`'s checked export made from exactly these files, or None.

    Found without hashing the model when its files' sizes and times are those recorded: the folders of one model
    id are few (one per set of files and versions), and each manifest says which files it was made from. A file
    whose time changed but whose content did not (a copy, a `touch`) gets its new time recorded."""
    root = cache_root()
    wanted_versions = versions()
    for folder in sorted(root.glob(f"{_safe_name(model_id)}-*")) if root.is_dir() else []:
        manifest = _read_manifest(folder)
        model = manifest.get("model")
        if not isinstance(model, dict) or model.get("id") != model_id or model.get("versions") != wanted_versions:
            continue
        if folder.name != cache_key(model_id, str(model.get("digest"))) or not isinstance(model.get("files"), dict):
            continue
        try:
            same, retimed = _same_files(files_root, relatives, model["files"])
        except OSError:
            continue
        if not same:
            continue
        if retimed:
            with _locked(folder):
                manifest = _read_manifest(folder)
                if isinstance(manifest.get("model"), dict):
                    manifest["model"]["files"] = model_identity(files_root, relatives, model["files"])
                    _write_manifest(folder, manifest)
        return folder, manifest
    return None


def record_model(folder: Path, model: dict[str, Any], files_root: Path, relatives: Sequence[str]) -> None:
    """Write the manifest's `model` part once every check passed: which files (under `files_root`) and toolchain
    the export was made from, and what a start without torch needs to know (vector size, preprocessing...)."""
    with _locked(folder):
        manifest = _read_manifest(folder)
        known = (manifest.get("model") or {}).get("files")
        files = model_identity(files_root, relatives, known if isinstance(known, dict) else None)
        manifest["model"] = {**model, "files": files, "versions": versions(),
                             "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_manifest(folder, manifest)


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


def runtime_setting(runtime: str | None) -> str:
    """VPM_RUNTIME as one of RUNTIMES (an unknown value is `auto`, with a warning)."""
    runtime = (runtime or "auto").strip().lower()
    if runtime not in RUNTIMES:
        log.warning("VPM_RUNTIME=%r is not one of %s; using auto", runtime, ", ".join(RUNTIMES))
        runtime = "auto"
    return runtime


def cached_network(folder: Path, manifest: dict[str, Any], name: str, quantize: bool, wanted: str
                   ) -> Network | None:
    """The network `name` as load_network would pick it from this manifest, or None where that needs torch."""
    entry = manifest.get(name) or {}
    if not _usable(folder, name, entry, quantize, wanted):
        return None
    try:
        variant = _choose(name, entry, wanted)
    except OnnxUnavailable:
        return None  # below the bar: the model runs on torch (accelerate says why)
    return Network(folder / entry["variants"][variant]["file"], variant, entry["variants"][variant]["cosine"])


def accelerate(embedder, runtime: str = "auto") -> None:
    """Move `embedder`'s networks onto ONNX Runtime in place; on any failure keep torch and say why."""
    runtime = runtime_setting(runtime)
    threads = configure_torch_threads()
    if runtime == "torch":
        embedder.runtime, embedder.runtime_reason = "torch", "VPM_RUNTIME=torch"
        return
    if getattr(embedder, "device", "cpu") != "cpu":
        embedder.runtime, embedder.runtime_reason = "torch", f"ONNX Runtime is used on cpu only (device {embedder.device})"
        return
    started = time.perf_counter()
    try:
        embedder.export_onnx(runtime)  # each kind of model has its own export (its module imports torch)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime is an optimisation: torch always works
        if isinstance(err, (OnnxUnavailable, NotImplementedError)):  # NotImplementedError: a model with no export
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
