"""Fine-tuning the real encoder on collaborative neighbours, on a handful of texts."""

from __future__ import annotations

import numpy as np

from tailor.models.encoder import TransformerEncoder
from tailor.models.encoder_tuning import collaborative_neighbours, tune_encoder_weights
from tailor.settings import EmbedSettings, EncoderTuningSettings


def test_collaborative_neighbours_known_answer():
    # Items 0 and 1 share all their users; 2 shares one user with 0; 3 is never chosen.
    histories = [np.array([0, 1]), np.array([0, 1, 2]), np.array([2])]
    found = collaborative_neighbours(histories, n_items=4, k=2)
    assert found[0].tolist() == [1, 2]  # cos(0,1) = 1 > cos(0,2) = 0.5
    assert found[1].tolist() == [0, 2]
    assert found[2].tolist()[0] in (0, 1)
    assert found[3].tolist() == []


def test_tuning_pulls_co_consumed_texts_together(tmp_path):
    # Pairs that people choose together although their texts have nothing in common.
    texts = [
        "A quiet documentary about glaciers.",
        "Explosive car chases in the city.",
        "A romantic comedy set in Paris.",
        "Space marines fight an alien swarm.",
        "A cooking competition among grandmothers.",
        "A courtroom drama about a wrongful conviction.",
    ]
    pairs = [(0, 1), (2, 3), (4, 5)]
    histories = [np.array(p) for p in pairs for _ in range(3)]
    embed = EmbedSettings()
    tuning = EncoderTuningSettings(
        enabled=True, epochs=6, batch_size=3, learning_rate=1e-4, neighbours=1
    )
    before = TransformerEncoder(embed).encode(texts)
    report = tune_encoder_weights(texts, histories, embed, tuning, tmp_path / "enc", seed=0)
    after = TransformerEncoder(embed.model_copy(update={"model": str(report.model_dir)}))
    vectors = after.encode(texts)

    def pair_gap(v):  # how much more similar a pair is than the other texts
        sims = v @ v.T
        return np.mean([sims[a, b] - np.mean(np.delete(sims[a], [a, b])) for a, b in pairs])

    assert report.steps == 6 * 2 and len(report.losses) == 6
    assert report.losses[-1] < report.losses[0]
    assert pair_gap(vectors) > pair_gap(before) + 0.1
