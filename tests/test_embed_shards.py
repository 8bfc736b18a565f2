"""New item texts encoded in shards on parallel workers: the same vectors as one pass."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.stages import embed as stage
from tailor.stages.data import prepare_data
from tests.conftest import tiny_settings


def test_shards_fill_the_cache_with_the_one_pass_vectors(workdir, tmp_path):
    settings = tiny_settings(workdir, embed={"shard_texts": 25})
    prepared = prepare_data(settings, tmp_path / "data")
    plan = stage.plan_embedding(prepared.items, settings, tmp_path / "plan")
    assert (plan.n_missing, plan.n_shards) == (80, 4)
    encoded = [stage.embed_shard(plan, i, settings) for i in range(plan.n_shards)]
    assert encoded == [25, 25, 25, 5]
    assert stage.embed_shard(plan, 0, settings) == 0  # a rerun finds its texts cached
    assert stage.plan_embedding(prepared.items, settings, tmp_path / "again").n_missing == 0

    sharded = stage.embed_items(prepared.items, settings, progress=False)
    assert (sharded.n_embedded, sharded.n_reused) == (0, 80)
    fresh = tiny_settings(tmp_path / "fresh")
    one_pass = stage.embed_items(prepared.items, fresh, progress=False)
    assert one_pass.n_embedded == 80
    a, b = np.load(sharded.vectors), np.load(one_pass.vectors)
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)


@pytest.mark.usefixtures("prefect_harness")
def test_the_train_flow_embeds_in_shards_with_a_parallel_runner(workdir):
    from flows.train import train

    settings = tiny_settings(
        workdir, embed={"shard_texts": 30}, runner={"kind": "threads", "workers": 2}
    )
    result = train(settings=settings)
    assert (result.n_embedded, result.n_reused) == (80, 0)
    plan = stage.plan_embedding(
        settings.runs_dir / result.run_id / "data" / "items.parquet", settings, workdir / "p"
    )
    assert plan.n_missing == 0  # every text went through the shards into the cache
    assert (settings.runs_dir / result.run_id / "embedding" / "texts_to_embed.parquet").is_file()
