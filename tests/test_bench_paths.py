"""The benches find the shared product photos beside the repository, never at one machine's absolute path, and
say clearly when they are not there."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_no_bench_names_an_absolute_folder_of_one_machine():
    found = {path.name: hits for path in sorted(BENCH.glob("*.py"))
             if (hits := re.findall(r"""["'](/(?:work|home|root|Users|tmp/vpm)[^"']*)["']""", path.read_text()))}
    assert found == {}


def test_the_benches_that_read_the_shared_photos_find_them_through_one_place():
    readers = {path.name for path in BENCH.glob("*.py") if re.search(r"""["']products-photos["']""", path.read_text())}
    assert readers <= {"shared_photos.py", "bench_quality.py"}  # bench_quality: its own --data default, relative
    for name in ("bench_api.py", "bench_embeddings.py", "bench_cluster.py"):
        assert "from shared_photos import PHOTOS, require_photos" in (BENCH / name).read_text()


def test_missing_photos_stop_a_bench_with_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("shared_photos", None)
    import shared_photos

    default = shared_photos.PHOTOS
    assert default == BENCH.parents[1] / "shared" / "datasets" / "products-photos"
    with pytest.raises(SystemExit) as missing:
        shared_photos.require_photos(tmp_path / "nowhere")
    message = str(missing.value)
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert "../shared/datasets/products-photos beside the repository" in message and "--photos FOLDER" in message
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(SystemExit, match="has no metadata.csv"):
        shared_photos.require_photos(tmp_path, metadata=True)
    assert shared_photos.require_photos(tmp_path) == tmp_path
