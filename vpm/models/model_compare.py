"""Compare image models on this catalog's own held-out photos, without touching its search index.

`python -m vpm evaluate --model A --model B` and the Match quality page run the same hold-out evaluation
(vpm/core/evaluate.py) once per model, on the same photos, and put the figures side by side: recall@1 and @5 with each
signal, per category, the time a query's ranking and embedding take, the fitted score.

Where each model's vectors come from:
- a model whose vector table in the catalog covers every photo (the one searches use, or an earlier VPM_MODEL whose
  table is complete) is evaluated on those stored vectors, read only;
- any other model embeds the catalog's photos into a vector table in a temporary folder outside the catalog, removed
  when the comparison closes. Nothing is written to the catalog or beside it: no table, no vector, no fit.

Every model is evaluated on the photos every model has a vector for (a photo one model could not read is left out
for all), with the same sample, folds and timed photos, one model after the other so only one model's vectors are
in memory at a time. A model that cannot be loaded here (not cached and no hub, a folder that is not a model) is
refused before anything is embedded, with the reason: a comparison never runs the built-in model in its place.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpm.core.errors import VpmError
from vpm.core.evaluate import (
    LATENCY_PHOTOS,
    MAX_PHOTOS,
    MAX_QUERIES,
    Evaluation,
    NothingToEvaluate,
    QualityReport,
    latency_cell,
)

if TYPE_CHECKING:
    from vpm.core.matcher import Matcher
    from vpm.core.stores import Stores
    from vpm.core.vector_index import VectorIndex
    from vpm.models.embedder_base import Embedder

log = logging.getLogger(__name__)

MAX_MODELS = 4  # each one embeds the whole catalog: a comparison stays minutes, not hours
MACHINE_MODELS_SHOWN = 50  # models listed from the local Hugging Face cache at most
BUILT_IN = "efficientnet-lite0"

Progress = Callable[..., None]  # progress(done, total, message="")


class ModelNotAvailable(VpmError, ValueError):
    """A model to compare cannot be loaded here; `name` and `reason` say which and why (the reason may hold a path:
    the Match quality page words it through vpm.models.model_outlook.not_loaded)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"the model {name!r} cannot be loaded here, so nothing was compared: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ModelColumn:
    """One model's evaluation in a comparison."""

    asked: str  # as it was named (VPM_MODEL's syntax)
    model_id: str
    name: str  # for people: never a path
    words: bool  # whether it also reads words
    runtime: str
    stored: bool  # evaluated on the catalog's own vectors (else embedded into a temporary folder)
    report: QualityReport

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.asked, "model_id": self.model_id, "name": self.name, "reads_words": self.words,
                "runtime": self.runtime, "vectors": "catalog" if self.stored else "temporary",
                **{k: v for k, v in self.report.as_dict().items() if k not in ("model", "confusions")}}


@dataclass(frozen=True)
class Comparison:
    columns: list[ModelColumn]
    photos: int  # photos every model had a vector for
    stopped: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, "stopped": self.stopped, "notes": list(self.notes),
                "models": [c.as_dict() for c in self.columns], "categories": category_table(self)}


class ModelComparison:
    """A comparison run in steps: `load()`, then `embed_next()` until not `embedding`, then `step()` until
    `finished`; `report()` at any point after loading; `close()` removes the temporary folder."""

    def __init__(self, matcher: Matcher, models: Sequence[str], *, rerank: bool | None = None,
                 max_queries: int = MAX_QUERIES, batch: int | None = None,
                 load: Callable[[str], Embedder] | None = None) -> None:
        names = list(dict.fromkeys(m.strip() for m in models if m and m.strip()))
        if not names:
            raise VpmError("name at least one model to evaluate (e.g. --model clip-ViT-B-32 --model facebook/dinov2-small)")
        if len(names) > MAX_MODELS:
            raise VpmError(f"compare at most {MAX_MODELS} models at once (got {len(names)}): each one embeds the whole "
                           "catalog")
        if not matcher.catalog_exists() or not matcher.count_products():
            raise NothingToEvaluate("the catalog is empty: add products with two or more photos each, then compare")
        photos = matcher.catalog.photo_count()
        if photos > MAX_PHOTOS:
            raise NothingToEvaluate(f"the catalog holds {photos:,} photos, more than a comparison holds in memory "
                                    f"({MAX_PHOTOS:,})")
        self.matcher = matcher
        self.names = names
        self.rerank = rerank
        self.max_queries = max_queries
        self.batch = batch
        self._load = load or (lambda name: _load_model(matcher, name))
        self._models: list[tuple[str, Embedder]] = []
        self._sources: dict[str, tuple[VectorIndex, bool]] = {}  # name -> (its vectors, whether the catalog's own)
        self._workspace: Path | None = None
        self._scratch: Stores | None = None  # the stores in the temporary folder, made with it
        self._common: set[str] | None = None
        self._current: Evaluation | None = None
        self._reports: list[tuple[str, Embedder, QualityReport]] = []
        self.notes: list[str] = []
        self.stopped = False

    # ------------------------------------------------------------------------------------------- phases

    @property
    def loaded(self) -> bool:
        return len(self._models) == len(self.names)

    def load(self) -> None:
        """Load every model; raises ModelNotAvailable for the first that cannot be, before anything is embedded."""
        for name in self.names[len(self._models):]:
            embedder = self._load(name)
            if embedder.fallback_reason and name.lower() != BUILT_IN:
                raise ModelNotAvailable(name, embedder.fallback_reason)
            if any(e.model_id == embedder.model_id for _n, e in self._models):
                self.notes.append(f"{name} is the same model as one already compared: it is shown once")
                self.names = [n for n in self.names if n != name]
                continue
            self._models.append((name, embedder))

    @property
    def embedding(self) -> bool:
        """Whether a model still has photos to embed (call embed_next)."""
        return self.loaded and len(self._sources) < len(self._models)

    def embed_next(self, progress: Progress | None = None) -> str:
        """Give the next model its vectors: the catalog's own when complete, else the photos embedded into the
        temporary folder (resumed where an interrupted call stopped). Returns the model's name."""
        from vpm.core.indexing import Indexer, coverage

        name, embedder = next((n, e) for n, e in self._models if n not in self._sources)
        if self.matcher.has_vector_index(embedder.model_id):
            stored = self.matcher.vector_index(embedder.model_id)
            if coverage(self.matcher.catalog, stored).missing == 0:
                self._sources[name] = (stored, True)
                return name
        index = self._temporary_index(embedder)
        Indexer(self.matcher.storage, self.matcher.catalog, index, embedder).embed_missing(progress)
        self._sources[name] = (index, False)
        return name

    def _temporary_index(self, embedder: Embedder) -> VectorIndex:
        from vpm.core.wiring import scratch_stores

        for _name, (index, stored) in self._sources.items():
            if not stored and index.model_id == embedder.model_id:
                return index
        if self._scratch is None:
            self._workspace = Path(tempfile.mkdtemp(prefix="vpm-compare-"))
            self._scratch = scratch_stores(self.matcher.settings, self._workspace)
        return self._scratch.vector_index(embedder.model_id, embedder.dim, False)

    def _common_keys(self) -> set[str]:
        if self._common is None:
            sets = []
            for index, _stored in self._sources.values():
                sets.append({key for batch in index.iter_keys() for key, _product in batch})
            self._common = set.intersection(*sets) if sets else set()
            catalog_photos = self.matcher.catalog.photo_count()
            if len(self._common) < catalog_photos:
                self.notes.append(f"{catalog_photos - len(self._common)} of {catalog_photos} catalog photos have no "
                                  "vector with every model (a photo that could not be read, or added meanwhile): "
                                  "they are left out for all")
        return self._common

    def _next_evaluation(self) -> Evaluation | None:
        if self._current is None and len(self._reports) < len(self._models):
            name, embedder = self._models[len(self._reports)]
            index, _stored = self._sources[name]
            options = {"batch": self.batch} if self.batch else {}
            self._current = Evaluation(self.matcher, rerank=self.rerank, max_queries=self.max_queries, vectors=index,
                                       embedder=embedder, only_keys=self._common_keys(),
                                       latency_photos=LATENCY_PHOTOS, **options)
        return self._current

    @property
    def finished(self) -> bool:
        return self.loaded and not self.embedding and len(self._reports) == len(self._models)

    @property
    def total(self) -> int:
        """Held-out photos to search with, for every model (known once the first evaluation started)."""
        if self._current is not None:
            planned = self._current.total
        else:
            planned = self._reports[0][2].planned if self._reports else 0
        return planned * len(self._models)

    @property
    def done(self) -> int:
        return sum(r.queries for _n, _e, r in self._reports) + (self._current.done if self._current else 0)

    def step(self) -> int:
        """Search with the next batch of held-out photos of the model being evaluated; returns how many."""
        evaluation = self._next_evaluation()
        if evaluation is None:
            return 0
        count = evaluation.step()
        if evaluation.finished:
            self._finish_current()
        return count

    def _finish_current(self) -> None:
        evaluation = self._current
        assert evaluation is not None
        name, embedder = self._models[len(self._reports)]
        self._reports.append((name, embedder, evaluation.report()))
        self._current = None  # its vectors go with it: one model's vectors in memory at a time

    def run(self, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> Comparison:
        """Every phase to the end (or until `should_stop()`); `progress(done, total, message)` follows each."""
        self.load()
        while self.embedding:
            if should_stop is not None and should_stop():
                return self.stop()
            self.embed_next(progress)
        while not self.finished:
            if should_stop is not None and should_stop():
                return self.stop()
            self.step()
            if progress is not None:
                progress(self.done, self.total, "held-out photos")
        return self.report()

    def stop(self) -> Comparison:
        """Stop here: the report covers the models evaluated so far (the one under way: what it did)."""
        self.stopped = True
        if self._current is not None:
            self._current.stopped = True
            self._finish_current()
        return self.report()

    def report(self) -> Comparison:
        columns = []
        seen: dict[str, int] = {}
        for name, embedder, report in self._reports:
            _index, stored = self._sources[name]
            shown = label(name)
            seen[shown] = seen.get(shown, 0) + 1
            shown += f" ({seen[shown]})" if seen[shown] > 1 else ""  # two folders of one name: still two columns
            columns.append(ModelColumn(name, embedder.model_id, shown, embedder.supports_text, embedder.runtime,
                                       stored, report))
        skipped = [name for name, _e in self._models[len(self._reports):]]
        notes = list(self.notes) + ([f"not evaluated (stopped first): {', '.join(skipped)}"] if skipped else [])
        return Comparison(columns, len(self._common or ()), self.stopped or not self.finished, notes)

    def close(self) -> None:
        """Remove the temporary folder and forget its tables (the catalog was never touched)."""
        self._current = None
        self._sources.clear()
        if self._scratch is not None:
            self._scratch.forget()
            self._scratch = None
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None

    def __enter__(self) -> ModelComparison:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _load_model(matcher: Matcher, name: str) -> Embedder:
    """The model `name` on the catalog's device and runtime (the active one is the matcher's own)."""
    from vpm.models.embeddings import load_embedder

    if name == (matcher.settings.vpm_model or "").strip():
        return matcher.embedder
    return load_embedder(name, matcher.settings.vpm_device, matcher.settings.vpm_runtime)


# ------------------------------------------------------------------------------------------------ choices


def models_on_this_machine(configured: str) -> list[str]:
    """What the Match quality page offers to compare, without loading anything: the model searches use (VPM_MODEL),
    the built-in one, and the models in the local Hugging Face cache that this app runs (CLIP through
    sentence-transformers, DINOv2, SigLIP 2). Nothing offered here needs a download."""
    from vpm.models.embeddings import _ST_ORG, _hub_cache_dir

    found = [(configured or "").strip() or "clip-ViT-B-32", BUILT_IN]
    cache = _hub_cache_dir()
    try:
        repos = sorted(p for p in cache.iterdir() if p.name.startswith("models--")) if cache.is_dir() else []
    except OSError:
        repos = []
    for repo in repos[:MACHINE_MODELS_SHOWN * 4]:
        snapshot = _snapshot(repo)
        if snapshot is None or not _runs_here(snapshot):
            continue
        name = repo.name.removeprefix("models--").replace("--", "/")
        found.append(name.removeprefix(f"{_ST_ORG}/"))
        if len(found) >= MACHINE_MODELS_SHOWN:
            break
    return list(dict.fromkeys(found))


def _snapshot(repo: Path) -> Path | None:
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    return folder if commit and folder.is_dir() else None


def _runs_here(folder: Path) -> bool:
    """Whether a cached snapshot is a model this app loads: a sentence-transformers model, CLIP, DINOv2, SigLIP."""
    from vpm.models.hf_models import FAMILIES

    if (folder / "modules.json").is_file():
        return True
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type == "clip" or model_type in FAMILIES


def label(name: str) -> str:
    """A model to choose, for people: the built-in one by its name, a folder by its last part, never a path."""
    from vpm.models.model_outlook import _short

    return "EfficientNet-Lite0 (built-in)" if name.lower() == BUILT_IN else _short(name)


# ------------------------------------------------------------------------------------------------ tables


def category_table(comparison: Comparison) -> list[dict[str, Any]]:
    """Per category: its photos, then each model's recall@1 and @5 (None where a model had none of them)."""
    by_model = [{c.category: c for c in column.report.categories} for column in comparison.columns]
    names = sorted({name for table in by_model for name in table}, key=str.casefold)
    rows = []
    for name in names:
        queries = max((table[name].queries for table in by_model if name in table), default=0)
        row: dict[str, Any] = {"category": name, "queries": queries}
        for column, table in zip(comparison.columns, by_model, strict=True):
            cell = table.get(name)
            row[column.asked] = None if cell is None else {"recall@1": round(cell.recall_at_1, 4),
                                                           "recall@5": round(cell.recall_at_5, 4)}
        rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def comparison_text(comparison: Comparison) -> str:
    """The comparison for a terminal: one column a model."""
    columns = comparison.columns
    if not columns:
        return "no model was evaluated" + "".join(f"\nnote: {note}" for note in comparison.notes)
    first = columns[0].report
    lines = [f"{len(columns)} model{'s' if len(columns) != 1 else ''} on the same {first.planned} held-out photos of "
             f"{first.products} products" + (" · verified by keypoints" if first.rerank else "")
             + (" (a sample)" if first.sampled else "") + (" · STOPPED early" if comparison.stopped else "")]
    head = [c.name for c in columns]
    rows: list[list[str]] = [
        ["vectors"] + ["the catalog's" if c.stored else "embedded here" for c in columns],
        ["reads words"] + ["yes" if c.words else "no" for c in columns],
        ["runs on"] + [c.runtime for c in columns],
        ["held-out photos searched"] + [str(c.report.queries) for c in columns],
        ["recall@1"] + [f"{c.report.recall_at_1:.1%}" for c in columns],
        ["recall@5"] + [f"{c.report.recall_at_5:.1%}" for c in columns],
        ["embed a query photo p50 / p95 ms"] + [f"{_ms(c.report.embed_p50_ms)} / {_ms(c.report.embed_p95_ms)}"
                                                 for c in columns],
        ["default threshold"] + ["-" if c.report.threshold is None else f"{c.report.threshold:.0%}" for c in columns],
    ]
    signal_names = list(dict.fromkeys(s.name for c in columns for s in c.report.signals))
    if signal_names:
        rows.append(["signals: r@1 · r@5 · ranking p50 / p95 ms"] + [""] * len(columns))
        for signal in signal_names:
            cells = []
            for column in columns:
                found = next((s for s in column.report.signals if s.name == signal), None)
                cells.append("-" if found is None else f"{found.recall_at_1:.1%} · {found.recall_at_5:.1%} · "
                             f"{latency_cell(found)}" + (" *" if found.used else ""))
            rows.append([f"  {signal}", *cells])
    lines += ["", *_table(["", *head], rows)]
    if any(s.used for c in columns for s in c.report.signals):
        lines.append("* what searches would use with that model")
    categories = category_table(comparison)
    if categories:
        cat_rows = []
        for row in categories:
            cells = []
            for column in columns:
                cell = row[column.asked]
                cells.append("-" if cell is None else f"{cell['recall@1']:.1%} · {cell['recall@5']:.1%}")
            cat_rows.append([row["category"], str(row["queries"]), *cells])
        lines += ["", "by category (recall@1 · recall@5)", *_table(["category", "photos", *head], cat_rows)]
    for column in columns:
        lines += [f"note ({column.name}): {note}" for note in column.report.notes]
    lines += [f"note: {note}" for note in comparison.notes]
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head).rstrip(), *(fmt.format(*row).rstrip() for row in rows)]


# ------------------------------------------------------------------------------------------------ for the page


def summary_rows(comparison: Comparison) -> list[dict[str, str]]:
    """The comparison as rows for a table (a measure a row, a model a column), whole percents as the page shows."""
    columns = comparison.columns

    def row(measure: str, cells: list[str]) -> dict[str, str]:
        return {"Measure": measure, **{column.name: cell for column, cell in zip(columns, cells, strict=True)}}

    rows = [
        row("Right product first", [f"{c.report.recall_at_1:.0%}" for c in columns]),
        row("Right product in the top 5", [f"{c.report.recall_at_5:.0%}" for c in columns]),
        row("Embedding a query photo (p50 / p95 ms)",
            [f"{_ms(c.report.embed_p50_ms)} / {_ms(c.report.embed_p95_ms)}" for c in columns]),
        row("Search by words", ["yes" if c.words else "no" for c in columns]),
        row("Vectors", ["the catalog's own" if c.stored else "embedded for this comparison" for c in columns]),
        row("Held-out photos searched", [str(c.report.queries) for c in columns]),
    ]
    for signal in dict.fromkeys(s.name for c in columns for s in c.report.signals):
        cells = []
        for column in columns:
            found = next((s for s in column.report.signals if s.name == signal), None)
            cells.append("-" if found is None else f"{found.recall_at_1:.0%} first · {found.recall_at_5:.0%} top 5 · "
                         f"{latency_cell(found)} ms" + (" (used)" if found.used else ""))
        rows.append(row(f"Signals: {signal}", cells))
    return rows


def category_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Per category, each model's "right first · in the top 5", whole percents."""
    out = []
    for entry in category_table(comparison):
        row: dict[str, Any] = {"Category": entry["category"], "Photos": entry["queries"]}
        for column in comparison.columns:
            cell = entry[column.asked]
            row[column.name] = "-" if cell is None else f"{cell['recall@1']:.0%} · {cell['recall@5']:.0%}"
        out.append(row)
    return out
