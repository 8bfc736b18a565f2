"""What several benchmarks start from: a workdir's data and item vectors, prepared and
embedded as `tailor run` does (the embeddings are cached in the workdir after the first time).

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder first on
the import path); it imports the project only when called, so a script's `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path


def load_workdir(workdir: str | Path, preset: str | None, folder: str):
    """(settings, item vectors, histories) of `workdir`, its data prepared under
    `<workdir>/<folder>/data`, so that each benchmark keeps its own copy."""
    import numpy as np

    from tailor.settings import load_settings
    from tailor.stages.data import load_histories, prepare_data
    from tailor.stages.embed import embed_items

    settings = load_settings(preset=preset, workdir=Path(workdir))
    prepared = prepare_data(settings, settings.workdir.resolve() / folder / "data")
    vectors = np.load(embed_items(prepared.items, settings, progress=False).vectors)
    return settings, vectors, load_histories(prepared)
