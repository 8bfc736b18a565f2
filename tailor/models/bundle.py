"""The bundle: everything needed to recommend, in one folder, registered in MLflow as one model.

items.parquet       item id, label, text, train popularity (row = item position)
text_vectors.npy    frozen language-model vectors (for reasons and text-only users)
item_vectors.npy    the fine-tuned model's item vectors (what the index holds)
index.faiss         faiss inner-product index over item_vectors
model/              fine-tuned weights and their config
settings.json       the run's resolved settings (no keys, URLs masked)
lineage.json        what it was trained on and how it was evaluated (production bundles)
checksums.json      sha256 of every other file; its own sha256 is recorded at registration

Loading reads only data formats: parquet, JSON, .npy without pickle, torch weights with
`weights_only=True`, a faiss index. Nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.models.index import load_index, save_index
from tailor.models.sequential import EnsembleRecommender, SeqRecommender, load_recommender

POPULARITY = "popularity"
LINEAGE_TAG = "tailor.lineage."
CHECKSUMS = "checksums.json"
DIGEST_TAG = "tailor.bundle_sha256"  # the model version's tag: sha256 of checksums.json


class BundleIntegrityError(RuntimeError):
    """A bundle's files are not the ones recorded at registration."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: Path) -> str:
    """Record the sha256 of every file of the bundle; returns the digest of that record."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS
    )
    sums = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True))
    return bundle_digest(folder)


def bundle_digest(folder: Path) -> str:
    return _sha256(Path(folder) / CHECKSUMS)


def verify_bundle(folder: Path, expected_digest: str) -> None:
    """Every file as recorded, nothing added, the record itself as registered; else raise
    `BundleIntegrityError` naming what differs."""
    folder = Path(folder)
    record = folder / CHECKSUMS
    if not record.is_file():
        raise BundleIntegrityError(f"model bundle {folder} has no {CHECKSUMS}")
    if bundle_digest(folder) != expected_digest:
        raise BundleIntegrityError(
            f"{record} is not the one registered (sha256 differs from the version's "
            f"{DIGEST_TAG} tag)"
        )
    sums = json.loads(record.read_text())
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS
    }
    for name in sorted(present | set(sums)):
        if name not in sums:
            raise BundleIntegrityError(f"model bundle {folder} has a file not registered: {name}")
        if name not in present:
            raise BundleIntegrityError(f"model bundle {folder} is missing {name}")
        if _sha256(folder / name) != sums[name]:
            raise BundleIntegrityError(f"{folder / name} differs from the registered file")


@dataclass(frozen=True)
class Lineage:
    """Where a model version comes from: its data, its exam and both fits' runs.

    `exam` identifies the evaluation protocol's cases and scoring (data fingerprint + every
    setting that decides them): two versions with one exam were measured on the same test
    events. `data_end` is the time of the last event the production fit learned from.
    """

    data_fingerprint: str
    exam: str
    data_start: str
    data_end: str
    evaluation_run_id: str
    production_run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation fit's test metrics

    def tags(self) -> dict[str, str]:
        """As model-version tags (metrics as repr, so NaN survives the round trip)."""
        plain = {k: str(v) for k, v in asdict(self).items() if k != "metrics"}
        metrics = {f"metric.{k}": repr(float(v)) for k, v in self.metrics.items()}
        return {LINEAGE_TAG + k: v for k, v in {**plain, **metrics}.items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage | None:
        """The lineage recorded on a model version, or None for a version without one."""
        own = {k.removeprefix(LINEAGE_TAG): v for k, v in tags.items() if k.startswith(LINEAGE_TAG)}
        metrics = {
            k.removeprefix("metric."): float(v) for k, v in own.items() if k.startswith("metric.")
        }
        plain = {k: v for k, v in own.items() if not k.startswith("metric.")}
        try:
            return cls(**plain, metrics=metrics)
        except TypeError:
            return None


def write_bundle(
    folder: Path,
    items: pl.DataFrame,
    popularity: np.ndarray,
    text_vectors: np.ndarray,
    model: SeqRecommender | EnsembleRecommender,
    index,
    settings_json: str,
    lineage: Lineage | None = None,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = items.select(C.ITEM_ID, C.LABEL, C.TEXT).with_columns(
        pl.Series(POPULARITY, np.asarray(popularity, dtype=np.int64))
    )
    table.write_parquet(folder / "items.parquet")
    np.save(folder / "text_vectors.npy", np.asarray(text_vectors, dtype=np.float32))
    np.save(folder / "item_vectors.npy", model.item_vectors())
    save_index(index, folder / "index.faiss")
    model.save(folder / "model")
    (folder / "settings.json").write_text(settings_json)
    if lineage is not None:
        (folder / "lineage.json").write_text(json.dumps(asdict(lineage), indent=2))
    write_checksums(folder)  # last: it covers every file above
    return folder


class Bundle:
    """A loaded bundle: the model, its index, and the item table that maps ids to positions."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        self.folder = Path(folder)
        for name in ("items.parquet", "text_vectors.npy", "item_vectors.npy", "index.faiss"):
            if not (self.folder / name).exists():
                raise FileNotFoundError(f"model bundle {self.folder} has no {name}")
        self.items = pl.read_parquet(self.folder / "items.parquet")
        self.text_vectors = np.load(self.folder / "text_vectors.npy")
        self.item_vectors = np.load(self.folder / "item_vectors.npy")
        self.index = load_index(self.folder / "index.faiss")
        self.model = load_recommender(self.folder / "model", self.text_vectors, device=device)
        self.item_ids: list[str] = self.items[C.ITEM_ID].to_list()
        self.labels: list[str] = self.items[C.LABEL].to_list()
        self.position = {item: pos for pos, item in enumerate(self.item_ids)}
        self.settings = json.loads((self.folder / "settings.json").read_text())
        lineage = self.folder / "lineage.json"
        self.lineage = Lineage(**json.loads(lineage.read_text())) if lineage.is_file() else None
        # Items added after training (`add_items`): scored by their text alone.
        self.new = np.zeros(len(self.item_ids), dtype=bool)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def add_items(
        self,
        item_ids: Sequence[str],
        texts: Sequence[str],
        labels: Sequence[str],
        text_vectors: np.ndarray,
    ) -> np.ndarray:
        """Append items the model never saw, in memory: scored by their text view like the
        held-out cold items, searchable through this bundle's index. Returns their positions."""
        if self.index.ntotal != self.n_items:
            raise RuntimeError("the index does not hold one row per item; cannot append")
        self.model.freeze()
        positions = self.model.add_items(text_vectors)
        vectors = self.model.item_vectors(positions)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        added = pl.DataFrame(
            {
                C.ITEM_ID: list(item_ids),
                C.LABEL: list(labels),
                C.TEXT: list(texts),
                POPULARITY: np.zeros(len(item_ids), dtype=np.int64),
            }
        )
        self.items = pl.concat([self.items, added.select(self.items.columns)])
        self.text_vectors = np.concatenate([self.text_vectors, text_vectors.astype(np.float32)])
        self.item_vectors = np.concatenate([self.item_vectors, vectors])
        self.new = np.concatenate([self.new, np.ones(len(positions), dtype=bool)])
        for item, label, pos in zip(item_ids, labels, positions, strict=True):
            self.item_ids.append(item)
            self.labels.append(label)
            self.position[item] = int(pos)
        return positions

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Known items' positions, in order; unknown ids are skipped."""
        return np.array([self.position[i] for i in item_ids if i in self.position], dtype=np.int64)
