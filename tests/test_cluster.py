"""`--cluster`: import and index on Ray give the single-process path's vectors, resume, and fail rows, not jobs.

A local Ray (2 CPUs, no dashboard) is started once for this module and stopped at its end; the catalog is a bucket
on moto's HTTP server; the photos are ~200 real product photos read from the shared dataset folder (copied only
into the test's temporary folder, as an import source); the model is the tiny offline CLIP.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vpm.core.config import load_settings
from vpm.core.matcher import Matcher

pytestmark = pytest.mark.cluster

if os.environ.get("CI"):
    import ray  # the test command installs it (requirements-dev.txt includes requirements-cluster.txt)
else:
    ray = pytest.importorskip("ray", reason="pip install -r requirements-cluster.txt (requirements-dev.txt has it)")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = REPO_ROOT.parent / "shared" / "datasets" / "products-photos"
PHOTOS = 200
SAME = 0.9999  # cosine between a photo's vector from the cluster and from the single-process path


def dataset_rows() -> list[dict[str, str]]:
    """The first PHOTOS rows of the dataset's metadata.csv (whole products: rows sharing a product_id)."""
    metadata = DATASET / "metadata.csv"
    if not metadata.exists():
        pytest.fail(f"the sample photos are missing: {metadata} (see the design notes' 'Data for benchmarks')")
    with metadata.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))[:PHOTOS]


def write_source(folder: Path, rows: list[dict[str, str]], *, broken: bool = True) -> Path:
    """A CSV import source in `folder`: the photos' bytes read from the dataset, plus one damaged JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [("image", "name", "category", "id")]
    for row in rows:
        (folder / row["file"]).write_bytes((DATASET / row["file"]).read_bytes())
        lines.append((row["file"], row["name"], row["category"], row["product_id"]))
    if broken:
        (folder / "broken.jpg").write_bytes((DATASET / rows[0]["file"]).read_bytes()[:600])
        lines.append(("broken.jpg", "Broken photo", "damaged", "broken-1"))
    with (folder / "products.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(lines)
    return folder / "products.csv"


def vectors_by_key(matcher: Matcher) -> dict[str, np.ndarray]:
    table = matcher.vectors.table.search().select(["photo_key", "vector"]).limit(None).to_arrow()
    return {k: np.asarray(v, dtype=np.float32)
            for k, v in zip(table.column("photo_key").to_pylist(), table.column("vector").to_pylist(), strict=True)}


def vectors_by_sha(matcher: Matcher) -> dict[str, np.ndarray]:
    table = matcher.vectors.table.search().select(["sha256", "vector"]).limit(None).to_arrow()
    return {s: np.asarray(v, dtype=np.float32)
            for s, v in zip(table.column("sha256").to_pylist(), table.column("vector").to_pylist(), strict=True)}


def assert_same_vectors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    cosines = {k: float(np.dot(got[k], want[k])) for k in want}  # unit vectors
    worst = min(cosines, key=cosines.get)
    assert cosines[worst] >= SAME, f"{worst}: cosine {cosines[worst]:.6f}"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module: 2 CPUs, no dashboard; started and stopped here. Its GCS address lets a
    subprocess (the CLI) join it through RAY_ADDRESS."""
    from vpm.backends import cluster

    context = ray.init(num_cpus=2, include_dashboard=False, runtime_env=cluster.runtime_env(),
                       logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_clip_dir):
    """The single-process path's vectors (by image SHA-256) for the photos: a plain import into a local folder."""
    from vpm.backends import engine

    rows = dataset_rows()
    root = tmp_path_factory.mktemp("reference")
    source = write_source(root / "source", rows, broken=False)
    settings = load_settings(vpm_data_dir=root / "data", s3_enabled=False, vpm_model=str(tiny_clip_dir),
                             vpm_device="cpu")
    matcher = Matcher(settings)
    report = matcher.import_path(source)
    assert not report.failed and report.photos_imported == PHOTOS
    by_sha = vectors_by_sha(matcher)
    engine.forget(matcher.where)
    return rows, by_sha


@pytest.fixture
def backend():  # only the S3 backend here: the catalog in a bucket on moto's HTTP server, as a cluster uses it
    return "s3"


@pytest.fixture
def bucket_matcher(search_settings):
    return Matcher(search_settings)


def cli_env(settings, gcs_address: str, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "S3_ENABLED": "true", "S3_BUCKET_NAME": settings.s3_bucket_name, "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "VPM_MODEL": settings.vpm_model, "VPM_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT), "RAY_ADDRESS": gcs_address, **more,
    }


def test_an_import_on_ray_through_the_cli_gives_the_single_process_vectors(
    ray_cluster, reference, bucket_matcher, search_settings, tmp_path
):
    rows, want = reference
    source = write_source(tmp_path / "source", rows)
    done = subprocess.run(
        [sys.executable, "-m", "vpm", "import", str(source), "--cluster", "ray", "--workers", "2", "--json"],
        cwd=tmp_path, env=cli_env(search_settings, ray_cluster), check=False, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]  # one photo failed: exit 1, as the single-process import
    report = json.loads(done.stdout)
    assert [f["source"] for f in report["failed"]] == ["row 202 (broken.jpg)"]
    assert "damaged" in report["failed"][0]["reason"]
    assert report["photos"] == PHOTOS and not report["skipped"]
    assert f"{PHOTOS + 1}/{PHOTOS + 1}" in done.stderr  # the progress bar, as without --cluster

    products = {p.id: p for p in bucket_matcher.iter_products()}
    assert len(products) == len({row["product_id"] for row in rows})
    assert sum(len(p.photos) for p in products.values()) == PHOTOS
    several = [p for p in products.values() if len(p.photos) > 1]
    assert several, "rows sharing an id make one product with several photos"
    assert_same_vectors(vectors_by_sha(bucket_matcher), want)
    for product in products.values():  # every row points at files that exist
        for photo in product.photos:
            assert bucket_matcher.storage.exists(photo.key) and bucket_matcher.storage.exists(photo.thumbnail_key)
    stored = {o.key for o in bucket_matcher.storage.list("images/").objects}
    assert stored == {photo.key for p in products.values() for photo in p.photos}  # the broken photo left nothing

    # Run again: everything is there already, so nothing is embedded, stored or committed a second time.
    from vpm.backends import cluster

    again = cluster.import_path(bucket_matcher, source, options=cluster.ClusterOptions(workers=2))
    assert not again.imported and again.photos_added == 0
    assert len(again.skipped) == PHOTOS and all("duplicate" in issue.reason for issue in again.skipped)
    assert {o.key for o in bucket_matcher.storage.list("images/").objects} == stored


def test_index_on_ray_equals_the_single_process_path_and_a_bad_photo_fails_only_its_row(
    ray_cluster, reference, bucket_matcher, tmp_path
):
    from vpm.backends import cluster

    rows, want = reference
    report = bucket_matcher.import_path(write_source(tmp_path / "source", rows, broken=False))
    assert report.photos_imported == PHOTOS
    before = vectors_by_key(bucket_matcher)
    product = next(bucket_matcher.iter_products())
    damaged = product.photos[0].key
    bucket_matcher.storage.put(damaged, b"\xff\xd8\xff\xe0 not a jpeg any more")  # a stored photo gone bad

    reported = []
    status = cluster.reindex(bucket_matcher, rebuild=True, options=cluster.ClusterOptions(workers=2, commit_every=64),
                             progress=lambda done, total, message="": reported.append((done, total)))
    assert reported[0] == (0, PHOTOS) and reported[-1] == (PHOTOS, PHOTOS)
    assert status.photos == PHOTOS
    assert [p.split(":")[0] for p in status.problems] == [damaged]  # one row failed, the job went on
    after = vectors_by_key(bucket_matcher)
    assert set(after) == set(before)  # the bad photo keeps the vector it had; every other one is re-embedded
    assert_same_vectors({k: v for k, v in after.items() if k != damaged},
                        {k: v for k, v in before.items() if k != damaged})
    assert_same_vectors(vectors_by_sha(bucket_matcher), want)


KILL_AFTER = 64  # photos committed before the driver is killed

KILLED_DRIVER = textwrap.dedent(f"""
    import os, signal, sys
    from vpm.backends import cluster
    from vpm.core.config import load_settings
    from vpm.core.matcher import Matcher

    def progress(done, total, message=""):
        print(done, total, flush=True)
        if done >= {KILL_AFTER}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as if the machine lost power

    matcher = Matcher(load_settings())
    options = cluster.ClusterOptions(workers=2, commit_every=32)
    with cluster.connected(options):
        cluster.reindex(matcher, options=options, progress=progress)
    sys.exit("the job was not killed")
""")


def test_an_index_job_killed_half_way_is_finished_by_a_rerun_that_embeds_only_what_is_missing(
    ray_cluster, reference, bucket_matcher, search_settings, tmp_path
):
    from vpm.backends import cluster

    rows, want = reference
    bucket_matcher.import_path(write_source(tmp_path / "source", rows, broken=False))
    keys = list(vectors_by_key(bucket_matcher))
    bucket_matcher.vectors.delete_photos(keys)  # as after a model change: every photo needs a vector
    assert bucket_matcher.vectors.count() == 0

    killed = subprocess.run([sys.executable, "-c", KILLED_DRIVER], cwd=tmp_path,
                            env=cli_env(search_settings, ray_cluster), check=False, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = bucket_matcher.vectors.count()
    assert KILL_AFTER <= committed < PHOTOS

    reported = []
    status = cluster.reindex(bucket_matcher, options=cluster.ClusterOptions(workers=2),
                             progress=lambda done, total, message="": reported.append((done, total)))
    assert reported[0] == (0, PHOTOS - committed)  # only the missing photos were sent to the workers
    assert status.ok and status.vectors == PHOTOS
    assert_same_vectors(vectors_by_sha(bucket_matcher), want)


def test_without_cluster_ray_is_never_imported(tmp_path, tiny_clip_dir):
    script = ("import sys\nfrom vpm.faces.cli import main\ncode = main(['index'])\n"
              "print('ray' in sys.modules, 'vpm.backends.cluster' in sys.modules)\nsys.exit(code)")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "VPM_DATA_DIR": str(tmp_path / "data"), "VPM_MODEL": str(tiny_clip_dir),
             "VPM_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("value", ["dask", "ray:", "ray://", "http://head:10001"])
def test_cluster_takes_only_ray_or_a_ray_address(value, capsys):
    from vpm.faces.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "--cluster", value])
    assert "ray://HOST:PORT" in capsys.readouterr().err
