"""Package text (vpm/models/package_text.py): real OCR of rendered labels, comparing texts, and the table that keeps
them (vpm/backends/lance_text.py) on a local folder and on S3."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from vpm.backends.lance_text import LanceTextStore, PhotoText
from vpm.models import package_text

REPO = Path(__file__).resolve().parents[1]
YELLOW, NAVY = (250, 220, 60), (20, 30, 120)


def label(lines: list[str], size=(420, 170), font_size=48, at=(24, 18)) -> Image.Image:
    """A carton's face: dark print on a coloured background."""
    image = Image.new("RGB", size, YELLOW)
    font = ImageFont.load_default(size=font_size)
    ImageDraw.Draw(image).multiline_text(at, "\n".join(lines), font=font, fill=NAVY, spacing=font_size // 3)
    return image


def as_phone_saw_it(image: Image.Image, degrees: float) -> Image.Image:
    """Held a little crooked and saved as a lossy JPEG."""
    tilted = image.rotate(degrees, expand=True, fillcolor=YELLOW, resample=Image.Resampling.BICUBIC)
    out = io.BytesIO()
    tilted.save(out, format="JPEG", quality=50)
    return Image.open(io.BytesIO(out.getvalue()))


# ---------------------------------------------------------------------------------------------- reading


def test_the_printed_words_are_read_one_line_a_line():
    assert package_text.available()

    text = package_text.read(label(["OATLY", "HAVRE"]))

    assert text.splitlines() == ["OATLY", "HAVRE"]


@pytest.mark.parametrize("degrees", [5, -4])
def test_a_tilted_jpeg_photo_is_still_read(degrees):
    text = package_text.read(as_phone_saw_it(label(["OATLY", "HAVRE"]), degrees))

    assert "oatly" in package_text.normalise(text)


def test_a_blank_photo_reads_nothing():
    assert package_text.read(Image.new("RGB", (400, 300), YELLOW)) == ""
    assert package_text.read(Image.new("L", (64, 64), 255)) == ""  # greyscale is converted, not refused


def test_a_huge_photo_is_scaled_down_before_it_is_read():
    huge = label(["OATLY HAVRE"], size=(6000, 300), font_size=200, at=(100, 30))

    assert package_text.frame(huge).size == (package_text.MAX_SIDE, 64)  # what OCR gets, not 6000 px
    assert "oatly havre" in package_text.normalise(package_text.read(huge))


def test_a_small_photo_is_never_upscaled_by_us():
    assert package_text.frame(Image.new("RGB", (348, 200))).size == (348, 200)


def test_without_rapidocr_nothing_is_read_and_one_warning_says_why():
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
        "from PIL import Image\n"
        "from vpm.models import package_text\n"
        "assert 'rapidocr' not in sys.modules, 'imported at module import'\n"
        "sys.modules['rapidocr'] = None  # as if it were not installed\n"
        "image = Image.new('RGB', (64, 64))\n"
        "print(package_text.available(), repr(package_text.read(image)), repr(package_text.read(image)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False '' ''"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "package text is off" in warnings[0]


# ---------------------------------------------------------------------------------------------- comparing


def test_normalise_keeps_letters_of_any_language_and_digits():
    assert package_text.normalise("Oatly! HAVRE-dryck\n1,5 L  Åkerö CAFÉ") == "oatly havre dryck 1 5 l åkerö café"
    assert package_text.normalise(" -- !! ") == ""


def test_the_candidate_with_the_same_words_comes_first():
    scores = package_text.similarities(
        "OATLY\nHAVRE\nEKOLOGISK",
        ["Arla\nMellanmjölk", "oatly havre ekologisk 1 l", "Alpro\nSoya", "Tropicana Golden Grapefruit"],
    )

    assert max(range(4), key=scores.__getitem__) == 1
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[1] > 0.5 and max(scores[0], scores[2], scores[3]) < 0.1


def test_identical_text_scores_one_and_nothing_read_scores_zero():
    assert package_text.similarities("OATLY HAVRE", ["OATLY HAVRE", "", "\n"]) == pytest.approx([1.0, 0.0, 0.0])
    assert package_text.similarities("", ["OATLY HAVRE", ""]) == [0.0, 0.0]
    assert package_text.similarities("OATLY", []) == []


def test_one_misread_letter_still_beats_an_unrelated_text():
    misread, unrelated = package_text.similarities("OATLY HAVRE", ["OATLV HAVRE", "ARLA KEFIR"])

    assert misread > 0.5 > unrelated


def test_words_every_candidate_shares_weigh_less_than_words_that_tell_them_apart():
    # Two words of one length: without the IDF the two first candidates would tie. Every candidate says
    # "NATURA"; only one says the query's brand.
    brand, shared_word = package_text.similarities(
        "GARANT NATURA", ["GARANT", "NATURA", "ARLA NATURA", "ALPRO NATURA"]
    )[:2]

    assert brand > shared_word > 0


def test_comparing_twenty_candidates_is_fast():
    import time

    candidates = [f"Arla Ko mellanmjölk {i} % fetthalt ekologisk svensk mjölk 1 liter" for i in range(20)]
    start = time.perf_counter()
    for _ in range(20):
        package_text.similarities("OATLY havredryck ekologisk 1 L", candidates)
    assert (time.perf_counter() - start) / 20 < 0.01  # ~0.6 ms here; generous for a loaded machine


def test_words_shown_are_the_longest_distinct_words_in_reading_order_as_read():
    text = "OATLY\nHAVRE 1,5L\nekologisk oatly\nno 2024"

    assert package_text.words_shown(text) == ["OATLY", "HAVRE", "ekologisk"]
    assert package_text.words_shown(text, limit=1) == ["ekologisk"]
    assert package_text.words_shown("1,5 L 500 ml") == []
    assert package_text.words_shown("") == []


# ---------------------------------------------------------------------------------------------- the table


def sha(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def store(engine_location) -> LanceTextStore:
    return LanceTextStore(engine_location)


def test_texts_are_kept_by_photo_and_by_image_hash(store):
    store.upsert([
        PhotoText("images/p1/a.jpg", "p1", sha(1), "OATLY\nHAVRE"),
        PhotoText("images/p1/b.jpg", "p1", sha(2), ""),  # read, nothing found
        PhotoText("images/p2/a.jpg", "p2", sha(3), "ARLA\nMJÖLK"),
    ])

    assert store.count() == 3
    found = store.texts_for(["images/p1/a.jpg", "images/p1/b.jpg", "images/p9/never-read.jpg"])
    assert found == {"images/p1/a.jpg": "OATLY\nHAVRE", "images/p1/b.jpg": ""}  # "" is not the same as no row
    assert store.photo_keys_with_text(["images/p1/b.jpg", "images/p9/never-read.jpg"]) == {"images/p1/b.jpg"}
    assert store.texts_for_shas([sha(3), sha(2), sha(9)]) == {sha(3): "ARLA\nMJÖLK", sha(2): ""}
    keys = [key for page in store.iter_keys(batch_size=2) for key in page]
    assert sorted(keys) == [("images/p1/a.jpg", "p1"), ("images/p1/b.jpg", "p1"), ("images/p2/a.jpg", "p2")]


def test_upserting_again_replaces_and_deletes_remove_by_photo_and_by_product(store):
    store.upsert([PhotoText("images/p1/a.jpg", "p1", sha(1), "OATLV"), PhotoText("images/p1/b.jpg", "p1", sha(2), "")])
    store.upsert([PhotoText("images/p1/a.jpg", "p1", sha(1), "OATLY"), PhotoText("images/p2/a.jpg", "p2", sha(3), "ARLA")])

    assert store.count() == 3
    assert store.texts_for(["images/p1/a.jpg"]) == {"images/p1/a.jpg": "OATLY"}

    store.delete_photos(["images/p1/b.jpg"])
    assert store.texts_for(["images/p1/a.jpg", "images/p1/b.jpg"]) == {"images/p1/a.jpg": "OATLY"}

    store.delete_products(["p1"])
    assert store.texts_for(["images/p1/a.jpg", "images/p2/a.jpg"]) == {"images/p2/a.jpg": "ARLA"}
    assert LanceTextStore(store.where).count() == 1  # another handle on the same place sees the same rows
