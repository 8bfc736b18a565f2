"""Fine-tune the text encoder so that text alone lands items where interactions put them.

Positives are collaborative neighbours: for an anchor item, an item whose interaction vector
(the users who chose it) is among its most cosine-similar. A contrastive loss (InfoNCE with
in-batch negatives) pulls the two texts together. Only items with training events take part,
so items held out as new are never seen; they benefit because their text now reads through
an encoder that has learned which texts go together in people's histories.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tailor.models.baselines import ItemKNN
from tailor.models.encoder import pick_device, resolve_model_path
from tailor.settings import EmbedSettings, EncoderTuningSettings

log = logging.getLogger(__name__)


def collaborative_neighbours(
    histories: Sequence[np.ndarray], n_items: int, k: int
) -> list[np.ndarray]:
    """Per item, its `k` most cosine-similar items by the set of users who chose it, best first.

    The item-kNN baseline's neighbourhoods without shrinkage (ties to the lower item index).
    Items without events get an empty array.
    """
    # Cosine is symmetric, so column j of the kept similarities lists j's neighbours.
    kept = ItemKNN(neighbours=k, shrink=0.0).fit(histories, n_items).similarity.tocsc()
    out = []
    for item in range(n_items):
        rows = kept.indices[kept.indptr[item] : kept.indptr[item + 1]]
        sims = kept.data[kept.indptr[item] : kept.indptr[item + 1]]
        order = np.lexsort((rows, -sims))
        out.append(rows[order].astype(np.int64))
    return out


@dataclass(frozen=True)
class EncoderTuningReport:
    model_dir: Path
    steps: int
    losses: list[float]  # mean loss per epoch
    seconds: float


def tune_encoder_weights(
    texts: Sequence[str],
    histories: Sequence[np.ndarray],
    embed: EmbedSettings,
    tuning: EncoderTuningSettings,
    out_dir: Path,
    seed: int,
    progress: bool = False,
) -> EncoderTuningReport:
    """Contrastive fine-tuning of the encoder on (item, collaborative neighbour) text pairs.

    Saves a Hugging Face model folder under `out_dir` that `EmbedSettings.model` can point to.
    """
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    device = pick_device(embed.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    path = resolve_model_path(embed.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device)
    model.train()

    neighbours = collaborative_neighbours(histories, len(texts), tuning.neighbours)
    anchors = np.array([i for i, n in enumerate(neighbours) if len(n)], dtype=np.int64)
    if len(anchors) < 2:
        raise ValueError("encoder tuning needs at least two items with training events")
    opt = torch.optim.AdamW(model.parameters(), lr=tuning.learning_rate, weight_decay=0.01)

    def encode(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=embed.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    losses: list[float] = []
    steps = 0
    batch_size = min(tuning.batch_size, len(anchors))
    per_epoch = len(anchors) // batch_size
    bar = tqdm(total=tuning.epochs * per_epoch, desc="tune encoder", disable=not progress)
    for _ in range(tuning.epochs):
        order = rng.permutation(anchors)
        total = 0.0
        for step in range(per_epoch):
            left = order[step * batch_size : (step + 1) * batch_size]
            right = np.array([rng.choice(neighbours[i]) for i in left], dtype=np.int64)
            a = encode([texts[i] for i in left])
            b = encode([texts[i] for i in right])
            logits = a @ b.T / tuning.temperature
            # A right-hand item may also be another row's anchor or neighbour: only the
            # exact same item counts as that row's positive, duplicates are masked out.
            same = torch.as_tensor(right[None, :] == right[:, None], device=device)
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
            target = torch.arange(len(left), device=device)
            loss = (
                torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)
            ) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        losses.append(total / max(per_epoch, 1))
        log.info("encoder tuning epoch %d: loss %.4f", len(losses), losses[-1])
    bar.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return EncoderTuningReport(out_dir, steps, losses, time.perf_counter() - started)
