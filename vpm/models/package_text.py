"""Package text: the words printed on a product, read from its photo (OCR) and compared between photos.

Two photos of one product read alike ("OATLY HAVRE 1 L") where their pixels may not, and two look-alike cartons
of different brands read differently. `read` runs once per photo, when it is added, and its text is stored
beside the vectors (vpm/backends/lance_text.py); a query reads its own photo and `similarities` compares the texts of
the top candidates with it: character 3-grams, so one misread letter costs a few grams, not the whole word.

OCR is rapidocr (PP-OCRv6 small detection and recognition on ONNX Runtime; the models ship inside its wheel, no
download), imported on first use only. Like keypoints, the text is optional derived data: without rapidocr
`available()` is False, `read` returns "" and nothing else changes.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

TEXT_ID = "ppocrv6"  # names the stored table (text-ppocrv6); change it when `read` changes
MAX_SIDE = 1280  # the photo is scaled down so its longer side is at most this before OCR (never up)
MIN_CONFIDENCE = 0.5  # recognised lines below this are mostly noise read into texture
QUICK_SIDE = 416  # the shorter side text is looked for at on a query photo (rapidocr enlarges to 736 by default)
# The files inside rapidocr 3.10's wheel, named outright: rapidocr then never looks for (or downloads) a model.
_MODELS = {"Det": "PP-OCRv6_det_small.onnx", "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
           "Rec": "PP-OCRv6_rec_small.onnx"}

_WORD = re.compile(r"[^\W_]+")  # a run of letters (any script) and digits

_load_lock = threading.Lock()
_call_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "engine": the process's one OCR engine, or None once loading it failed


# ---------------------------------------------------------------------------------------------- reading


def available() -> bool:
    """Whether photos can be read here (rapidocr installed and its models loaded); loads them on first call."""
    return _ocr() is not None


def _ocr() -> Any:
    with _load_lock:
        if "engine" not in _loaded:
            try:
                _loaded["engine"] = _create()
            except Exception as err:  # noqa: BLE001 - optional derived data: no OCR is a warning, never a failure
                _loaded["engine"] = None
                log.warning("package text is off: the OCR engine (rapidocr) could not be loaded (%s: %s); "
                            "searches and adds work without it", type(err).__name__, err)
        return _loaded["engine"]


def _create() -> Any:
    import rapidocr

    models = Path(rapidocr.__file__).parent / "models"
    params: dict[str, Any] = {
        "Global.log_level": "error",  # at info it logs every model it loads, on its own stderr handler
        "Global.text_score": MIN_CONFIDENCE,
        # One thread: a photo is small work, and the machine is shared with searches (2 cores here).
        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    for step, name in _MODELS.items():
        if not (models / name).is_file():
            raise FileNotFoundError(f"{name} is not in {models}; reinstall rapidocr (see requirements.txt)")
        params[f"{step}.model_path"] = str(models / name)
    engine = rapidocr.RapidOCR(params=params)
    # rapidocr loads each model on its first photo; load them now, so a broken install shows here, once.
    engine._load_det_model()
    engine._load_cls_model()
    engine._load_rec_model()
    return engine


def frame(image: Image.Image) -> Image.Image:
    """The photo as OCR sees it: RGB, longer side at most MAX_SIDE (never upscaled by us: memory is bounded).

    rapidocr then enlarges it so its shorter side is 736 px for detection (small print needs it), letterboxing
    anything wider than 8:1, so what it holds is at most about 5900 x 736 px whatever arrives.
    """
    from PIL import Image as PILImage

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = MAX_SIDE / max(rgb.size)
    if scale < 1:  # resize makes a new, small image: a big RGB photo is never copied at full size
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    return rgb


def read(image: Image.Image, *, quick: bool = False) -> str:
    """The text printed on the photo: one recognised line a line, those read with confidence >= MIN_CONFIDENCE.

    `quick` is for a query photo, read while a person waits: text found at QUICK_SIDE instead of rapidocr's 736 px
    and no check for upside-down lines. Measured on 398 shopper-like photos: CPU p50 315 -> 100 ms, as many words
    read, and the same recall@1 once compared. "" when nothing is read, and when OCR is not available here (then
    `available()` is False: store nothing, so that `vpm index` can read the photo later).
    """
    ocr = _ocr()
    if ocr is None:
        return ""
    bgr = np.ascontiguousarray(np.asarray(frame(image))[:, :, ::-1])  # rapidocr takes arrays as OpenCV's BGR
    try:
        # One photo at a time. rapidocr 3.10 gave the same text from 4 threads at once, but each call has a core
        # already, and on a shared 2-core machine a second OCR would take the one searches need.
        with _call_lock:
            detector = ocr._load_det_model()  # where rapidocr keeps the detection size it reads on each call
            default_side = detector.limit_side_len
            detector.limit_side_len = QUICK_SIDE if quick else default_side
            try:
                result = ocr(bgr, use_cls=not quick)
            finally:
                detector.limit_side_len = default_side
    except Exception as err:  # noqa: BLE001 - optional derived data: an unreadable photo has no text, no failure
        log.warning("could not read the text on a photo (%s: %s)", type(err).__name__, err)
        return ""
    texts = getattr(result, "txts", None) or ()
    scores = getattr(result, "scores", None) or ()
    return "\n".join(t.strip() for t, s in zip(texts, scores, strict=False) if s >= MIN_CONFIDENCE and t.strip())


# ---------------------------------------------------------------------------------------------- comparing


def normalise(text: str) -> str:
    """Casefolded words of letters (any script: å, é, ß...) and digits, one space between them."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFC", text).casefold()))


def _grams(text: str) -> Counter[str]:
    grams: Counter[str] = Counter()
    for word in normalise(text).split():
        padded = f" {word} "  # grams stay inside a word; the spaces let its first and last letters count too
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def similarities(query_text: str, candidate_texts: Sequence[str]) -> list[float]:
    """Cosine of character-3-gram TF-IDF vectors between the query's text and each candidate's, each in [0, 1].

    The IDF is taken over just these texts (the candidates and the query): a gram every candidate shares (a
    brand all of them carry, "ml", "ekologisk") then says little, and the words that tell them apart weigh most.
    An empty text (nothing read) scores 0.
    """
    query = _grams(query_text)
    docs = [_grams(t) for t in candidate_texts]
    if not query:
        return [0.0] * len(docs)
    df = Counter(query.keys())
    for d in docs:
        df.update(d.keys())
    n = len(docs) + 1
    idf = {g: math.log((1 + n) / (1 + c)) + 1 for g, c in df.items()}  # smoothed, as scikit-learn's
    q = {g: tf * idf[g] for g, tf in query.items()}
    q_norm = math.sqrt(sum(v * v for v in q.values()))
    scores = []
    for d in docs:
        weighted = {g: tf * idf[g] for g, tf in d.items()}
        d_norm = math.sqrt(sum(v * v for v in weighted.values()))
        dot = sum(v * q[g] for g, v in weighted.items() if g in q)
        scores.append(min(1.0, dot / (q_norm * d_norm)) if d_norm else 0.0)
    return scores


def words_shown(text: str, limit: int = 3) -> list[str]:
    """The few words that tell a person what was read ("reads: OATLY, HAVRE"): the longest distinct words of
    3+ letters, in reading order, as read. Digits alone ("500", "2024") and short words say little."""
    words: dict[str, tuple[int, str]] = {}  # casefolded word -> (first position, as read)
    for position, word in enumerate(_WORD.findall(unicodedata.normalize("NFC", text))):
        if sum(ch.isalpha() for ch in word) >= 3:
            words.setdefault(word.casefold(), (position, word))
    longest = sorted(words.values(), key=lambda pw: (-len(pw[1]), pw[0]))[: max(0, limit)]
    return [word for _, word in sorted(longest)]
