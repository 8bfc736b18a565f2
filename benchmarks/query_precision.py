"""What int8 query vectors cost in quality and buy in speed, against the float encoder.

    python benchmarks/query_precision.py [--workdir .tailor] [--preset NAME] [--texts 300]

Encodes the catalogue's item texts with the float ONNX encoder (what the catalogue's vectors
are), then the item labels (titles, for MovieLens) and a few free-text queries as queries,
once per encoder: float (`serve.query_int8 = false`) and int8 (`serve.query_int8 = true`).
Prints, per encoder: milliseconds for one short text on one thread (the median over `--texts`
texts never seen before), how many labels find their own item first, the overlap of each
query's top 10 by text similarity with the float encoder's, and the cosine of each label's
vector with its float vector. The catalogue's vectors and profiles always stay float.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

FREE_QUERIES = [
    "a funny movie about dogs",
    "space battle science fiction",
    "romantic comedy in paris",
    "dark thriller with a twist",
    "animated film for kids",
    "war drama",
    "western with horses",
    "horror in a haunted house",
    "a musical",
    "crime story in new york",
    "documentary about music",
    "film noir detective",
]


def top_k(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(items))
    return np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def single_text_ms(encoder, n: int) -> float:
    encoder.encode([FREE_QUERIES[0]])  # the first pass allocates
    times = []
    for i in range(n):
        text = f"{FREE_QUERIES[i % len(FREE_QUERIES)]} {i}"  # never the same text twice
        started = time.perf_counter()
        encoder.encode([text])
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    parser.add_argument("--texts", type=int, default=300, help="texts timed per encoder")
    args = parser.parse_args()

    import polars as pl

    from tailor import columns as C
    from tailor.models.encoder import OnnxEncoder
    from tailor.settings import load_settings
    from tailor.stages.data import prepare_data

    settings = load_settings(preset=args.preset, workdir=Path(args.workdir))
    prepared = prepare_data(settings, settings.workdir.resolve() / "query_precision" / "data")
    items = pl.read_parquet(prepared.items, columns=[C.LABEL, C.TEXT])
    labels, texts = items[C.LABEL].to_list(), items[C.TEXT].to_list()
    encoders = {
        "float32": OnnxEncoder(settings.embed, settings.cache_dir, int8=False, threads=1),
        "int8": OnnxEncoder(settings.embed, settings.cache_dir, int8=True, threads=1),
    }
    catalogue = encoders["float32"].encode(texts)
    own = np.arange(len(labels))
    found: dict[str, dict] = {}
    for name, encoder in encoders.items():
        found[name] = {
            "ms": single_text_ms(encoder, args.texts),
            "labels": encoder.encode(labels),
            "free": encoder.encode(FREE_QUERIES),
        }
    reference = found["float32"]
    ref_labels = top_k(reference["labels"], catalogue, 10)
    ref_free = top_k(reference["free"], catalogue, 10)
    print(
        f"\n{len(labels):,} labels as queries over {len(texts):,} item texts "
        f"(float catalogue vectors), {len(FREE_QUERIES)} free-text queries\n"
    )
    print(
        "| query encoder | ms / text (1 thread) | labels finding their item first | "
        "top-10 overlap: labels | top-10 overlap: free text | cosine with float (mean / min) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, row in found.items():
        first = int((top_k(row["labels"], catalogue, 1)[:, 0] == own).sum())
        cos = np.sum(row["labels"] * reference["labels"], axis=1)
        print(
            f"| {name} | {row['ms']:.2f} | {first:,} of {len(labels):,} | "
            f"{overlap(top_k(row['labels'], catalogue, 10), ref_labels):.3f} | "
            f"{overlap(top_k(row['free'], catalogue, 10), ref_free):.3f} | "
            f"{cos.mean():.4f} / {cos.min():.4f} |"
        )
    speedup = found["float32"]["ms"] / found["int8"]["ms"]
    print(f"\nint8 is {speedup:.2f}x the float encoder's speed for one text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
