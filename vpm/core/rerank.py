"""Verification of the top candidates by local features: SIFT keypoints matched and checked with RANSAC.

A global descriptor says two photos look alike; matching keypoints that agree on one geometric transform says
they show the same printed package, label or object. `rerank` adds a small bonus per verified match (an inlier)
to each candidate's cosine and re-orders the candidates by the sum; the cosine itself is what the results show.

Keypoints are computed once per photo, when it is added (`extract`), and stored beside the vectors
(vpm/backends/lance_features.py), so a query only extracts its own and matches them against the candidates' (~2-5 ms a
candidate). At most MAX_KEYPOINTS a photo, with uint8 descriptors (SIFT's are whole numbers 0-255 already):
~70 KB a photo. OpenCV (opencv-python-headless) is imported on first use only.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

FEATURES_ID = "sift"  # names the stored table (features-sift); change it when `extract` changes
FRAME_SIDE = 512  # keypoints are found on the photo scaled so its longer side is at most this
MAX_KEYPOINTS = 500
RATIO = 0.8  # Lowe's ratio test: a match must be clearly better than the second best
RANSAC_PX = 8.0  # reprojection error allowed, in the 512 px frame
MIN_INLIERS = 10  # fewer verified matches than this is what two unrelated photos can produce: no bonus
INLIER_WEIGHT = 0.002  # bonus per inlier, added to the cosine
MAX_INLIERS_COUNTED = 50  # so the bonus is at most 0.1: verification re-orders close calls, never overrules
RERANK_TOP = 20  # candidates verified per query
RERANK_PHOTOS = 2  # photos verified per candidate product: its best by cosine, and the next best


@dataclass(frozen=True)
class LocalFeatures:
    """A photo's keypoints in its FRAME_SIDE frame: positions (n, 2) float32 and descriptors (n, 128) uint8."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int  # the frame's size (the photo scaled down to FRAME_SIDE)
    height: int

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> tuple[bytes, bytes]:
        return (np.ascontiguousarray(self.points, dtype=np.float32).tobytes(),
                np.ascontiguousarray(self.descriptors, dtype=np.uint8).tobytes())

    @classmethod
    def from_bytes(cls, points: bytes, descriptors: bytes, width: int, height: int) -> LocalFeatures:
        xy = np.frombuffer(points, dtype=np.float32).reshape(-1, 2)
        desc = np.frombuffer(descriptors, dtype=np.uint8).reshape(-1, 128)
        if len(xy) != len(desc):
            raise ValueError(f"{len(xy)} keypoints but {len(desc)} descriptors")
        return cls(xy, desc, int(width), int(height))


@dataclass(frozen=True)
class Verification:
    inliers: int  # matches consistent with one homography (0 below MIN_INLIERS)
    pairs: np.ndarray  # (inliers, 4) float32: query x, y, candidate x, y in their frames

    @property
    def bonus(self) -> float:
        return INLIER_WEIGHT * min(self.inliers, MAX_INLIERS_COUNTED) if self.inliers >= MIN_INLIERS else 0.0


NO_MATCH = Verification(0, np.zeros((0, 4), dtype=np.float32))


_OPENCV: list[Any] = []


def _cv2() -> Any:
    if _OPENCV:
        return _OPENCV[0]
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - it is in requirements.txt
        raise RuntimeError(f"verification needs OpenCV: pip install opencv-python-headless ({err})") from err
    cv2.setNumThreads(1)  # small images: threads cost more than they save on a shared 2-core machine (set once: ~1 ms)
    _OPENCV.append(cv2)
    return cv2


_BLAS: list[Any] = []  # threadpoolctl's controller: finding the loaded libraries costs ~2 ms, so it is done once


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while matching: its idle threads spin, and for these small products (500 x 128
    by 128 x 500) that spinning cost 10 ms of CPU a match instead of 0.8 ms, stolen from a 2-core machine."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - it is in requirements.txt; without it matching is only slower
        yield
        return
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    with _BLAS[0].limit(limits=1, user_api="blas"):
        yield


def frame(image: Image.Image) -> Image.Image:
    """The photo as keypoints see it: greyscale, longer side at most FRAME_SIDE (never upscaled: bounded)."""
    from PIL import Image as PILImage

    grey = image.convert("L")
    grey.thumbnail((FRAME_SIDE, FRAME_SIDE), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    return grey


def extract(image: Image.Image) -> LocalFeatures:
    """SIFT keypoints of a photo: the strongest MAX_KEYPOINTS, found in its FRAME_SIDE frame."""
    cv2 = _cv2()
    grey = frame(image)
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    keypoints, descriptors = sift.detectAndCompute(np.asarray(grey), None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), grey.width, grey.height)
    keypoints, descriptors = keypoints[:MAX_KEYPOINTS], descriptors[:MAX_KEYPOINTS]
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8), grey.width, grey.height)


def _root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović & Zisserman, 2012): L1-normalise, square root; Euclidean then compares better."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


def verify(query: LocalFeatures, candidate: LocalFeatures) -> Verification:
    """Match the two photos' keypoints (ratio test), then count the matches one homography explains (RANSAC)."""
    return verify_many(query, [candidate])[0]


def verify_many(query: LocalFeatures, candidates: Sequence[LocalFeatures | None]) -> list[Verification]:
    """`verify` of the query against each candidate photo (None: no stored keypoints, no match), the query's
    RootSIFT computed once. One candidate at a time: its 500 x 500 similarities stay in the CPU's cache, where one
    matrix product over a block of candidates was measured slower (38-42 ms for 40 candidates against 48-53)."""
    out = [NO_MATCH] * len(candidates)
    if len(query) < MIN_INLIERS:
        return out
    cv2 = _cv2()
    ours = _root_sift(query.descriptors)
    for i, candidate in enumerate(candidates):
        if candidate is not None and len(candidate) >= 2:
            # RootSIFT vectors have unit length, so the squared distance is 2 - 2 * dot: one matrix product finds
            # every query keypoint's two nearest candidate keypoints.
            out[i] = _geometry(cv2, query, candidate, ours @ _root_sift(candidate.descriptors).T)
    return out


def _geometry(cv2: Any, query: LocalFeatures, candidate: LocalFeatures, similarity: np.ndarray) -> Verification:
    """The ratio test on one candidate's similarities (query keypoints x candidate keypoints; changed in place),
    then the matches one homography explains."""
    rows = np.arange(len(similarity))
    nearest = similarity.argmax(axis=1)
    s1 = similarity[rows, nearest]
    similarity[rows, nearest] = -np.inf
    s2 = similarity.max(axis=1)
    d1 = np.sqrt(np.maximum(2 - 2 * s1, 0))
    d2 = np.sqrt(np.maximum(2 - 2 * s2, 0))
    good = d1 < RATIO * d2
    if int(good.sum()) < MIN_INLIERS:
        return NO_MATCH
    src = query.points[good]
    dst = candidate.points[nearest[good]]
    # OpenCV's USAC (graph-cut RANSAC with local optimisation): the same inliers as plain RANSAC to within one or
    # two, in ~0.05 ms instead of ~4 ms when the two photos do not match (plain RANSAC then runs every iteration).
    _, mask = cv2.findHomography(src, dst, cv2.USAC_ACCURATE, RANSAC_PX, maxIters=500, confidence=0.99)
    if mask is None:
        return NO_MATCH
    keep = mask.ravel().astype(bool)
    inliers = int(keep.sum())
    if inliers < MIN_INLIERS:
        return Verification(inliers, np.zeros((0, 4), dtype=np.float32))
    return Verification(inliers, np.hstack([src[keep], dst[keep]]).astype(np.float32))


@dataclass(frozen=True)
class Reranked:
    order: list[int]  # candidate positions, best first
    inliers: list[int]  # per candidate (input order); 0 when not verified or without keypoints
    changed: bool  # whether the order differs from the input's


Candidate = LocalFeatures | Sequence[LocalFeatures | None] | None


def rerank(scores: Sequence[float], query: LocalFeatures | None, candidates: Sequence[Candidate]) -> Reranked:
    """Order candidates (given best first by cosine) by cosine + bonus; the first RERANK_TOP are verified.

    A candidate is a product: the keypoints of one photo, or of a few (its best photos; the most inliers count).
    A photo without stored keypoints adds nothing (no bonus): `vpm index` fills them in.
    """
    n = len(scores)
    inliers = [0] * n
    if query is not None and len(query) >= MIN_INLIERS:
        with one_blas_thread():
            for i in range(min(n, RERANK_TOP)):
                photos = [candidates[i]] if isinstance(candidates[i], LocalFeatures) else candidates[i] or []
                inliers[i] = max((verify(query, f).inliers for f in photos if f is not None), default=0)
    combined = [scores[i] + (INLIER_WEIGHT * min(inliers[i], MAX_INLIERS_COUNTED) if inliers[i] >= MIN_INLIERS
                             else 0.0) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-combined[i], i))
    return Reranked(order, inliers, order != list(range(n)))


# ---------------------------------------------------------------------------------------------- drawing


def draw_matches(query_image: Image.Image, candidate_image: Image.Image, *, max_lines: int = 80) -> tuple[bytes, int]:
    """"Why this match": the two photos side by side with their verified matches drawn as lines (PNG bytes),
    and the number of inliers. Both photos are shown at their keypoint frame (at most FRAME_SIDE px)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    q_frame, c_frame = _colour_frame(query_image), _colour_frame(candidate_image)
    with one_blas_thread():
        found = verify(extract(query_image), extract(candidate_image))
    gap = 12
    canvas = PILImage.new("RGB", (q_frame.width + gap + c_frame.width, max(q_frame.height, c_frame.height)), "white")
    canvas.paste(q_frame, (0, 0))
    canvas.paste(c_frame, (q_frame.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    offset = q_frame.width + gap
    step = max(1, len(found.pairs) // max_lines)
    for qx, qy, cx, cy in found.pairs[::step]:
        draw.line([(qx, qy), (cx + offset, cy)], fill=(0, 200, 80), width=1)
        for x, y in ((qx, qy), (cx + offset, cy)):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=(0, 120, 255), width=1)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue(), found.inliers


def _colour_frame(image: Image.Image) -> Image.Image:
    from PIL import Image as PILImage

    copy = image.convert("RGB")
    if copy is image:
        copy = image.copy()
    copy.thumbnail((FRAME_SIDE, FRAME_SIDE), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    return copy
