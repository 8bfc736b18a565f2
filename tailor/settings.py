"""Typed settings for every stage.

One `Settings` object is resolved per run (defaults < settings file < environment < explicit
arguments) and logged to MLflow as parameters. Defaults run small on a laptop; bigger setups
are named presets (`PRESETS`) or deployment parameters.

Environment variables use the prefix ``TAILOR_`` and ``__`` between levels, for example
``TAILOR_TRAIN__EPOCHS=5`` or ``TAILOR_DATA__SOURCE=synthetic``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PositiveInt,
    SecretStr,
    SerializationInfo,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# MovieLens ratings run 1-5. From 3, 1- and 2-star ratings (17 % of them) are history, not
# targets or "liked"; README's Measured section shows the quality table at 0, 3 and 4.
MOVIELENS_POSITIVE = 3.0


def _mask_unless_revealed(value: str | None, info: SerializationInfo) -> str | None:
    # JSON is what leaves the process (Prefect's stored flow parameters, MLflow, bundles):
    # a password in a connection URL is masked there unless the caller asks for it.
    if value is None or (info.context or {}).get(REVEAL_URLS):
        return value
    return mask_url(value)


REVEAL_URLS = "reveal_urls"
# A connection URL that may carry a password: kept in Python, masked in any JSON dump (Prefect
# stores a flow's parameters as JSON) unless dumped with context={REVEAL_URLS: True}.
SecretUrl = Annotated[
    str, PlainSerializer(_mask_unless_revealed, when_used="json", return_type=str)
]


def _check_key_lengths(keys: list[SecretStr], name: str) -> list[SecretStr]:
    short = sum(len(k.get_secret_value()) < MIN_KEY_CHARS for k in keys)
    if short:
        raise ValueError(
            f"{short} of serve.{name} is shorter than {MIN_KEY_CHARS} characters: API keys are "
            "guessable at that length (make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return keys


MIN_KEY_CHARS = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnMap(_Section):
    """Names of the columns in the user's own files; they are renamed to `tailor.columns`."""

    user_id: str = Field("user_id", description="User id column (interactions, users).")
    item_id: str = Field("item_id", description="Item id column (interactions, items, vectors).")
    timestamp: str = Field("timestamp", description="Event time column (interactions).")
    weight: str | None = Field(
        None, description="Optional rating/weight column; every event weighs 1.0 without it."
    )
    vector: str = Field("vector", description="Vector column in an item-vectors Parquet.")


class SyntheticSettings(_Section):
    """A seeded catalogue with Zipf-like popularity and users with topic interests."""

    n_users: int = Field(200, ge=2, description="Number of users.")
    n_items: int = Field(300, ge=2, description="Number of items.")
    n_topics: int = Field(6, ge=1, description="Number of topics items and users belong to.")
    events_per_user: int = Field(25, ge=3, description="Mean events per user (Poisson).")
    zipf_exponent: float = Field(1.0, ge=0.0, description="Popularity skew within a topic.")
    topic_affinity: float = Field(
        0.9, ge=0.0, le=1.0, description="Share of a user's events inside their topics."
    )


def _as_location(value: Any) -> Any:
    # A URL must stay a string: Path("s3://b/k") would collapse it to "s3:/b/k".
    return str(value) if isinstance(value, Path) else value


# A local path or an object-store URL (s3://bucket/key; endpoint and keys from AWS_* variables).
Location = Annotated[str, BeforeValidator(_as_location)]


class DataSettings(_Section):
    """Where the data comes from and how item text is made."""

    source: Literal["movielens-100k", "synthetic", "files"] = Field(
        "movielens-100k",
        description="Built-in MovieLens-100K, the seeded synthetic generator, or your own files.",
    )
    interactions_path: Location | None = Field(
        None, description="CSV or Parquet of events (source=files): a path or an s3:// URL."
    )
    items_path: Location | None = Field(
        None, description="CSV or Parquet of items (source=files): a path or an s3:// URL."
    )
    users_path: Location | None = Field(
        None, description="Optional CSV or Parquet of user profiles: a path or an s3:// URL."
    )
    item_vectors_path: Location | None = Field(
        None,
        description="Parquet of item id + vector made elsewhere; replaces the built-in encoder.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column-name mapping.")
    timestamp_format: str | None = Field(
        None,
        description="strptime format of string timestamps; None = epoch seconds or ISO 8601.",
    )
    text_template: str | None = Field(
        None,
        description="Item text, e.g. '{title}. {description}'; None = the built-in source's own.",
    )
    label_template: str | None = Field(
        None, description="Short item name for reasons, e.g. '{title}'; None = source's own or id."
    )
    positive_min_weight: float | None = Field(
        None,
        ge=0.0,
        description="Events whose weight (rating) reaches this are positives: what models learn "
        "to predict, what counts as a hit and what reasons call 'liked'; every event is still "
        "input history. None = the source's own: 3 for MovieLens-100K (ratings 1-5), every "
        "event otherwise. 0 makes every event a positive.",
    )
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
    partition_events: int | None = Field(
        None,
        ge=1_000,
        description="Clean and split the interactions file in user partitions of about this "
        "many events (source=files, a local file), so memory holds one partition and never "
        "the whole file; the results are those of the whole file at once. None = read the "
        "whole file (the default: fastest while it fits in memory).",
    )

    @property
    def positive_threshold(self) -> float | None:
        """The weight an event needs to be a positive; None = every event is one."""
        if self.positive_min_weight is not None:
            return self.positive_min_weight or None
        return MOVIELENS_POSITIVE if self.source == "movielens-100k" else None

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataSettings:
        if self.source == "files":
            if self.interactions_path is None or self.items_path is None:
                raise ValueError(
                    "data.source='files' needs data.interactions_path and data.items_path"
                )
            if self.text_template is None and self.item_vectors_path is None:
                raise ValueError(
                    "data.source='files' needs data.text_template (which item fields to embed) "
                    "or data.item_vectors_path (vectors computed elsewhere)"
                )
        if self.partition_events is not None:
            if self.source != "files":
                raise ValueError("data.partition_events needs data.source='files'")
            if str(self.interactions_path).startswith("s3://"):
                raise ValueError(
                    "data.partition_events streams a local interactions file; "
                    f"copy {self.interactions_path} to local disk or unset data.partition_events"
                )
        return self


class EncoderTuningSettings(_Section):
    """Optional contrastive fine-tuning of the text encoder on collaborative neighbours."""

    enabled: bool = Field(
        False, description="Tune the encoder before embedding (see tailor.models.encoder_tuning)."
    )
    epochs: int = Field(2, ge=1, description="Passes over the items with training events.")
    batch_size: int = Field(64, ge=2, description="Item pairs per step (in-batch negatives).")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature of the InfoNCE loss.")
    neighbours: int = Field(10, ge=1, description="Collaborative neighbours per item to pair.")


class EmbedSettings(_Section):
    """The language-model encoder that turns item text into vectors."""

    model: str = Field(
        DEFAULT_ENCODER,
        description="Hugging Face model name or local path; the default ships in site-packages.",
    )
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    max_length: int = Field(128, ge=8, description="Tokens per text; longer texts are truncated.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16 is ~2x faster on CPUs with AVX512-BF16, cos >= 0.9998."
    )
    tuning: EncoderTuningSettings = Field(default_factory=EncoderTuningSettings)
    shard_texts: int = Field(
        20_000,
        ge=1,
        description="With a parallel runner (runner.kind = dask, or threads with workers > 1): "
        "new texts per shard, each shard one task encoding on a worker that loads the encoder "
        "once. Fewer new texts than this are encoded in one pass.",
    )


class IndexSettings(_Section):
    """The faiss index over item vectors, chosen by catalogue size, its depth tuned to a recall."""

    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = Field(
        "auto",
        description="The index the evaluation, the gate and the nightly refresh search: auto = "
        "exact (flat) up to exact_max_items, IVF up to pq_min_items, IVF-PQ with exact "
        "re-ranking of the shortlist above. The live service always searches exactly (it "
        "updates rows in place as items arrive).",
    )
    factory: str | None = Field(
        None,
        description="A faiss index_factory string (e.g. 'IVF4096,PQ32x4fs,RFlat') used instead "
        "of `kind`; inner product either way.",
    )
    exact_max_items: int = Field(50_000, ge=1, description="Largest catalogue searched exactly.")
    pq_min_items: int = Field(
        500_000, ge=1, description="From this many items on, auto compresses vectors (IVF-PQ)."
    )
    target_recall: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Recall@k against exact search that the search depth (nprobe / efSearch) "
        "is tuned to reach on a sample of real queries; logged to MLflow.",
    )
    tune_queries: int = Field(
        2000, ge=10, description="Sampled users whose vectors tune the search depth."
    )
    tune_k: int = Field(
        200,
        ge=1,
        description="The k of the tuned recall@k: the depth the refresh and the evaluation "
        "search (the re-ranker's rerank.candidates), so the lists chosen from it match exact "
        "search.",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW neighbours per node.")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW build-time beam width.")
    hnsw_ef_search: int = Field(128, ge=8, description="HNSW query-time beam width (untuned).")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; None = 4*sqrt(n_items).")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists visited per query (untuned).")
    train_sample: int = Field(
        100_000, ge=1000, description="Item vectors the IVF centroids and PQ codebooks learn from."
    )


class TrainSettings(_Section):
    """The sequential recommender: a causal transformer over item vectors built from text."""

    dim: int = Field(64, ge=8, description="Model width.")
    layers: int = Field(2, ge=1, description="Transformer blocks (GRU layers with `gru`).")
    heads: int = Field(2, ge=1, description="Attention heads.")
    max_len: int = Field(50, ge=2, description="Events of history the model reads.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in blocks and inputs.")
    sequence: Literal["transformer", "gru"] = Field(
        "transformer",
        description="What reads a history: causal self-attention (SASRec-style) or a GRU "
        "(GRU4Rec-style; the id-only baseline `gru4rec` is this on ids).",
    )
    text: bool = Field(
        True,
        description="Read the items' language-model vectors (adapter(text)); off = ids only, "
        "a plain SASRec (the id-only baseline `sasrec` is this with the same budget).",
    )
    id_embedding: bool = Field(
        True, description="Add a learned id embedding to adapter(text); off = text only."
    )
    id_gate: float = Field(
        0.0,
        ge=0.0,
        description="> 0: an item's id embedding weighs n / (n + id_gate) beside its text, n its "
        "training positives, so items with few events lean on their text (0 = off).",
    )
    id_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of items whose id embedding is dropped per training step, so the "
        "text part alone must rank them (what new items have).",
    )
    text_view_weight: float = Field(
        0.6,
        ge=0.0,
        description="Weight of a second softmax loss on the text view alone (adapter(text), "
        "no id); > 0 also scores items without training events by that view, calibrated "
        "against the full view (0 = off: such items borrow their text neighbours' ids).",
    )
    text_view_share: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of a step's targets the text view's loss is computed on, drawn "
        "afresh each step (an unbiased estimate of the whole loss; its product with the "
        "catalogue was a quarter of an epoch here at 1).",
    )
    cold_id_neighbours: int = Field(
        3,
        ge=0,
        description="Items with no training event get the similarity-weighted id embedding of "
        "this many text-nearest trained items (0 = text part only).",
    )
    epochs: int = Field(12, ge=1, description="Most passes over the training sequences.")
    patience: int | None = Field(
        3,
        ge=1,
        description="Stop after this many epochs since the last one scoring near the best "
        "(`keep_tolerance`); None = run every epoch. On thin data the fit overfits within a few "
        "epochs (MovieLens-100K at 10 % of its events: validation NDCG@10 peaked at epoch 4 "
        "and fell by 40 % by epoch 12).",
    )
    batch_size: int = Field(32, ge=1, description="Sequences per step.")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW (peak) learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    popularity_correction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Subtract this x log(item frequency) from training logits (logQ correction).",
    )
    softmax: Literal["auto", "full", "sampled"] = Field(
        "auto",
        description="full = every item in every step's softmax; sampled = each target against "
        "`negatives` items drawn uniformly from the trained ones, computing only the vectors a "
        "step reads (a step then costs the same for 10^4 or 10^6 items); auto = sampled for "
        "catalogues over `full_softmax_items`.",
    )
    negatives: int = Field(
        1024,
        ge=1,
        description="Items each sampled-softmax step scores its targets against (a step at "
        "1,024 took a third of one at 4,096 here).",
    )
    in_batch_negatives: bool = Field(
        True,
        description="With the sampled softmax: the batch's targets are negatives too (popular "
        "items, sampled as often as they are targets), each candidate logQ-corrected; "
        "uniform negatives alone left the lists on the head (tail-recall and coverage "
        "significantly worse on MovieLens, no longer so with these).",
    )
    full_softmax_items: int = Field(
        100_000,
        ge=1,
        description="With softmax = auto: the largest catalogue trained with a full softmax.",
    )
    refit: bool = Field(
        True,
        description="After early stopping on validation, refit on train + validation for the "
        "best number of epochs; the refit model is evaluated on test. The production fit (what "
        "is served) trains on every event for the same number of epochs either way.",
    )
    refit_epochs: int | None = Field(
        2,
        ge=1,
        description="With refit: None = refit from scratch for the best number of epochs; n = "
        "warm-start the refit from the early-stopped model and train n more epochs (and the "
        "production fit from the evaluated members, on every event, for n epochs).",
    )
    refit_windows: Literal["every", "newest"] = Field(
        "newest",
        description="What a warm refit and the production fit train on: every window of "
        "every history, or each user's newest window only (the one that holds the events "
        "added since the model they continue was trained; it has learned the older ones): "
        "43 % of MovieLens's windows.",
    )
    refit_learning_rate: float | None = Field(
        1e-3,
        gt=0,
        description="Peak learning rate of a warm refit (None = learning_rate): a trained "
        "model only has the added events to learn, so a smaller step keeps what it knows "
        "(on the newest windows alone, the full rate cost coverage@20).",
    )
    ensemble: bool = Field(
        True,
        description="With refit, evaluate the mean of the early-stopped model and its refit "
        "(steadier than either alone); the production fit is then the mean of two members "
        "trained on every event with seeds seed and seed + 1.",
    )
    schedule: Literal["constant", "one-cycle"] = Field(
        "one-cycle",
        description="Learning rate over the fit: one-cycle = linear warm-up over the first "
        "`warmup` share of steps to learning_rate, then a cosine down to 0 at the last epoch "
        "(the best epoch comes within a short budget); constant = learning_rate throughout.",
    )
    warmup: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the steps the one-cycle schedule warms up in."
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="The weights a fit with validation ends with: best = the validated epoch "
        "`keep_tolerance` picks (the budget adapts to the data: thin data overfits in a few "
        "epochs, every event wants the whole schedule); last = the end of the schedule.",
    )
    keep_tolerance: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="With keep = best: the latest validated epoch scoring within this share of "
        "the best score is kept (0 = the best epoch itself), and patience counts from it. "
        "Validation cannot tell such epochs apart, and later epochs of a one-cycle fit have "
        "learned more of the tail and of new items.",
    )
    valid_every: int = Field(
        1,
        ge=1,
        description="Run the validation pass every this many epochs (and after the last); "
        "early stopping and the kept best epoch only see those epochs. With keep = last and "
        "no patience the pass only reports, and each cost about 7 % of an epoch here.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto = bf16 autocast on a CUDA device with native bf16, fp32 on CPUs "
        "(measured slower under autocast even with AMX at this model's width); bf16 forces it.",
    )
    catalogue_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Precision of the full softmax's three products with the catalogue (the "
        "logits and both gradients, most of a step); its softmax and loss stay fp32. auto = "
        "bf16 where the device computes it natively (a CUDA device with bf16, a CPU with "
        "AVX512-BF16 or AMX), fp32 elsewhere, where bf16 would be emulated.",
    )
    threads: PositiveInt | Literal["auto"] | None = Field(
        "auto",
        description="torch CPU threads: auto = the cores idle when the fit starts (more "
        "threads than free cores makes every step wait on the slowest); None = torch default.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    production_beside: bool = Field(
        True,
        description="Run the production fit in a child process beside the evaluation and "
        "cold-start stages (all three need only the evaluation fit), on half the free cores "
        "when `threads = auto`; false = after them, in the flow's process.",
    )

    @model_validator(mode="after")
    def _reads_something(self) -> TrainSettings:
        if not self.text and not self.id_embedding:
            raise ValueError("train.text and train.id_embedding cannot both be off")
        return self


class SearchSettings(_Section):
    """Grid of model hyper-parameters for `tailor search`; every combination is one trial.

    Each trial trains on the train events, early-stops on validation and is scored by
    validation NDCG@10 at the configured re-ranking strength; the test events are not used.
    """

    learning_rate: list[float] = Field([2e-3, 4e-3], description="train.learning_rate values.")
    text_view_weight: list[float] = Field([0.0, 0.3], description="train.text_view_weight values.")
    dropout: list[float] = Field([0.2], description="train.dropout values.")
    max_len: list[int] = Field([50], description="train.max_len values.")

    def trials(self) -> list[dict[str, float | int]]:
        """Every combination, in a fixed order."""
        names = ["learning_rate", "text_view_weight", "dropout", "max_len"]
        values = [getattr(self, name) for name in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]

    @model_validator(mode="after")
    def _non_empty(self) -> SearchSettings:
        for name in ("learning_rate", "text_view_weight", "dropout", "max_len"):
            if not getattr(self, name):
                raise ValueError(f"search.{name} needs at least one value")
        return self


class EvalSettings(_Section):
    """The evaluation protocol (docs/ARCHITECTURE.md): temporal leave-one-out, full ranking."""

    ks: list[int] = Field(
        [10, 20],
        description="Cut-offs for ranking metrics; must include 10 and 20, which the claims, "
        "the gate's default metric and the tables use (more may be added).",
    )
    head_share: float = Field(
        0.2, gt=0, lt=1, description="Share of most popular train items that counts as head."
    )
    gate_metric: str = Field(
        "test_ndcg_at_10",
        pattern=r"^test_",
        description="Test metric the champion gate compares, on cases neither model trained on "
        "(see docs/ARCHITECTURE.md, 'The champion gate').",
    )
    gate_min_cases: int = Field(
        50,
        ge=1,
        description="Fewest test cases later than the champion's data that the gate needs to "
        "compare on new data; with fewer, the new version is kept out.",
    )
    cold_item_share: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="Share of items held out of training entirely, to measure cold-item recall; "
        "0 trains on every item.",
    )
    baselines: list[
        Literal["most-popular", "item-knn", "ease", "als", "text-cosine", "sasrec", "gru4rec"]
    ] = Field(
        ["most-popular", "item-knn", "ease", "als", "text-cosine", "sasrec"],
        description="Baselines evaluated in the same run; `sasrec` is the sequential model on "
        "ids only (no text), trained with the same budget, early stopping and refit; "
        "`gru4rec` is the same on ids with a GRU instead of self-attention.",
    )
    search_baselines: bool = Field(
        True, description="Grid-search each baseline on validation (else its defaults)."
    )
    baselines_beside: bool = Field(
        True,
        description="Fit the baselines (the id-only sequential fits, the grid searches) in a "
        "child process beside the evaluation fit, each on half the free cores when "
        "`train.threads = auto`; false = in the evaluation stage, after the fit. Same models "
        "either way for a fixed `train.threads`; side by side is sooner on few cores.",
    )
    ablation: bool = Field(
        False,
        description="Also train the sequential model with its parts switched off (text only, "
        "ids + text, + text view) and report what each adds against SASRec-CE; several more "
        "trainings, so off by default (benchmarks/quality.py turns it on).",
    )
    bootstrap_resamples: int = Field(
        1000, ge=100, description="Paired bootstrap resamples for the confidence intervals."
    )
    draws: int = Field(
        0,
        ge=0,
        description="Cold-item and new-user draws: each holds out its own seeded share of items "
        "and of users, trains the production recipe on the rest and measures them, with an "
        "item-clustered bootstrap (one training per draw, so off by default; "
        "benchmarks/quality.py runs 3).",
    )
    new_user_share: float = Field(
        0.1, ge=0.0, lt=0.5, description="Share of eligible users each draw holds out as new."
    )
    new_user_events: list[int] = Field(
        [0, 1, 3, 5],
        description="A new user's first events given as the whole history, one row per count.",
    )
    new_user_targets: int = Field(
        10, ge=1, description="A new user's next positives scored (after their first events)."
    )

    @model_validator(mode="after")
    def _ks_positive(self) -> EvalSettings:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("eval.ks must be a non-empty list of positive integers")
        if not {10, 20} <= set(self.ks):
            raise ValueError(
                f"eval.ks {self.ks} must include 10 and 20: the claims (NDCG@10, "
                "tail-recall@20) and the tables read them"
            )
        if not self.new_user_events or min(self.new_user_events) < 0:
            raise ValueError("eval.new_user_events must be a non-empty list of counts >= 0")
        return self


class RerankSettings(_Section):
    """Tail-aware re-ranking after retrieval."""

    strength: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="0 = the model's ranking; higher = more long-tail items; 1 = tail first.",
    )
    candidates: int = Field(200, ge=1, description="Retrieved items the re-ranker chooses from.")
    sweep: list[float] = Field(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
        description="Strengths measured for the accuracy / tail-share plot.",
    )


class RefreshSettings(_Section):
    """The nightly refresh of per-user recommendations."""

    k: int = Field(20, ge=1, le=1000, description="Recommendations stored per user.")
    store_url: SecretUrl | None = Field(
        None,
        description="SQLAlchemy URL; None = SQLite file in the workdir. A password in it is "
        "masked wherever settings leave the process (flow parameters, MLflow, logs).",
    )
    batch_users: int = Field(1024, ge=1, description="Users scored per faiss search call.")
    block_users: int = Field(
        50_000,
        ge=1,
        description="Users per block: each block is one retriable task writing one Parquet part; "
        "blocks run in parallel on `runner`.",
    )
    chunk_rows: int = Field(
        50_000, ge=1, description="Rows per write transaction; the swap to the new set is one."
    )


class RunnerSettings(_Section):
    """Where a flow's parallel tasks run (the refresh's user blocks)."""

    kind: Literal["threads", "dask"] = Field(
        "threads",
        description="threads = in the flow's own process; dask = a Dask cluster (install "
        "tailor[scale]): a local one of `workers` processes, or the one at `dask_address`.",
    )
    workers: int = Field(
        1, ge=1, description="Threads, or local Dask worker processes (one thread each)."
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster, e.g. tcp://scheduler:8786."
    )


class TrackingSettings(_Section):
    """Where MLflow records runs and models."""

    tracking_uri: SecretUrl | None = Field(
        None,
        description="MLflow tracking URI; None = SQLite file in the workdir (a password in it "
        "is masked wherever settings leave the process).",
    )
    artifact_root: str | None = Field(
        None,
        description="Where new experiments keep artifacts; None = mlartifacts/ in the workdir "
        "for a local store, the tracking server's own default for an http(s) URI.",
    )
    experiment: str = Field("tailor", description="Experiment for training runs.")
    refresh_experiment: str = Field("tailor-refresh", description="Experiment for refresh runs.")
    model_name: str = Field("tailor-recommender", description="Registered model name.")
    champion_alias: str = Field("champion", description="Alias the promotion gate moves.")
    log_personal_data: bool = Field(
        False,
        description="Opt in to raw user ids and profile fields in MLflow artifacts (quarantine, "
        "samples); off = user ids are pseudonymised with a keyed hash and profile fields "
        "withheld. The run folder in the workdir always keeps the raw files.",
    )
    pseudonym_key: SecretStr | None = Field(
        None,
        description="Key of the pseudonymising hash (at least 16 characters); None = a random "
        "key made once per workdir (cache/pseudonym.key, readable only by its owner). Never "
        "logged.",
    )

    @model_validator(mode="after")
    def _key_is_long_enough(self) -> TrackingSettings:
        if self.pseudonym_key is not None and len(self.pseudonym_key.get_secret_value()) < 16:
            raise ValueError(
                "tracking.pseudonym_key is shorter than 16 characters: a short key lets anyone "
                "with a list of likely ids reverse the pseudonyms"
            )
        return self


class ServeSettings(_Section):
    """The real-time service (`tailor serve`): limits, blending and where live data goes."""

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    model_version: str | None = Field(
        None,
        description="Serve this registered version; None = the champion alias, followed "
        "when it moves.",
    )
    poll_seconds: float = Field(
        30.0, ge=0.0, description="How often to check whether the alias moved; 0 = never."
    )
    live_url: SecretUrl | None = Field(
        None,
        description="SQLAlchemy URL of the live log (inserted items, feedback events) that "
        "the next nightly run reads; None = SQLite file in the workdir (a password in it is "
        "masked wherever settings leave the process).",
    )
    query_weight: float = Field(
        10.0,
        ge=0.0,
        le=100.0,
        description="Weight of the query's text similarity against the model's log-probability "
        "score (a cosine of 0.1 is worth one log-probability unit at 10).",
    )
    profile_fields: list[str] = Field(
        ["age", "gender", "occupation"],
        description="User-file columns that make a profile text; missing ones are ignored.",
    )
    profile_neighbours: int = Field(
        100, ge=1, description="Known users with the closest profile text a new user borrows from."
    )
    profile_prior: float = Field(
        25.0,
        ge=0.0,
        description="Pseudo-users of global popularity mixed into the neighbours' shares.",
    )
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_session_items: int = Field(200, ge=1, description="Most session items per request.")
    max_exclude_items: int = Field(1000, ge=0, description="Most excluded items per request.")
    max_query_chars: int = Field(1000, ge=1, description="Longest query or profile value.")
    max_item_text_chars: int = Field(10_000, ge=1, description="Longest item text accepted.")
    max_items_per_request: int = Field(100, ge=1, description="Most items per insert request.")
    max_events_per_request: int = Field(1000, ge=1, description="Most events per request.")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Larger request bodies are refused with 413."
    )
    query_cache_size: int = Field(
        10_000, ge=0, description="Query and profile texts whose vectors are kept in memory."
    )
    encoder_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="What runs the language model for queries, profiles and new items on a "
        "CPU: ONNX Runtime (the same vectors, ~2.7x faster for short texts; exported once into "
        "the workdir cache) or PyTorch. On a GPU it is always PyTorch.",
    )
    query_int8: bool = Field(
        True,
        description="Encode free-text queries in int8 (CPU only; one text per pass, so a "
        "query's vector never depends on what it arrived with): about 2.6x faster for one "
        "short text, slightly different vectors (mean cosine 0.992 with the float ones over "
        "MovieLens titles, top-10 by text 90 % the same: benchmarks/query_precision.py). "
        "Items and profiles always use float weights; false = float queries too.",
    )
    user_batch: int = Field(
        32,
        ge=1,
        description="Live requests whose user vectors one encoder pass computes at most: "
        "requests arriving during a pass share the next one.",
    )
    insert_batch: int = Field(
        256,
        ge=1,
        description="Item-insert requests one live-log commit and one model update carry at "
        "most: inserts arriving during a commit share the next one.",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch and faiss (OpenMP) threads per request; 1 leaves the other core to "
        "the language model and to other requests.",
    )
    max_live_users: int = Field(
        100_000,
        ge=0,
        description="Users first seen live (not in the data) whose histories stay in memory; "
        "the least recently used beyond this are dropped and rebuilt from the live log when "
        "they return (0 = no bound).",
    )
    max_live_items: int = Field(
        100_000,
        ge=0,
        description="Most items a running model takes on top of its catalogue (POST /items, "
        "new ids); more are refused with 409 until the next training run includes them.",
    )
    encoder_queue_texts: int = Field(
        256,
        ge=1,
        description="Texts (queries, profiles, new items) that may wait for the encoder; more "
        "are answered 503 with Retry-After instead of queueing without bound.",
    )
    write_keys: list[SecretStr] = Field(
        [],
        description="API keys accepted on writes (POST /items, POST /events, /admin/*) in the "
        "X-API-Key header; none = writes are refused (403). Give them through the environment "
        "(TAILOR_SERVE__WRITE_KEYS='[\"...\"]') or a config file readable only by the service; "
        "they are never logged, printed or written to MLflow.",
    )
    read_keys: list[SecretStr] = Field(
        [],
        description="API keys required on reads (recommendations, items, metrics); a write "
        "key reads too. None set: reads are open on loopback only; a service listening "
        "beyond it refuses to start unless `open_reads` says so.",
    )
    open_reads: bool = Field(
        False,
        description="Answer reads without a key on a non-loopback `host` (a deliberate choice, "
        "for a service behind a gateway that checks callers itself; the start-up log says so).",
    )
    max_history_events: int = Field(
        200,
        ge=1,
        description="Newest events per user held in memory: the model reads the newest "
        "train.max_len, the rest keep items already seen out of live lists. Older events stay "
        "in the data and the live log, which the nightly run reads whole.",
    )
    follow_seconds: float = Field(
        0.5,
        ge=0.0,
        description="How often the service reads what other processes sharing its live log "
        "wrote (items, events), so replicas and workers see each other's writes; 0 = never.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Worker processes of `tailor serve` on one port, each with its own model, "
        "sharing the live log (memory grows with each).",
    )
    store_timeout_seconds: float = Field(
        2.0,
        gt=0.0,
        description="Longest a stored-list read may wait for the database (a lock, a slow "
        "server) before it is answered 503 with Retry-After; the event loop never waits.",
    )
    max_concurrency: int = Field(
        512,
        ge=1,
        description="Connections and requests uvicorn serves at once; beyond it, 503 at once "
        "instead of an unbounded queue.",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0.0,
        description="Longest a client may take to send a request body (408 after it): a slow "
        "sender cannot hold a connection open.",
    )
    event_future_seconds: float = Field(
        300.0,
        ge=0.0,
        description="Events timestamped later than now plus this (clock skew) are refused.",
    )
    event_floor: str = Field(
        "1990-01-01T00:00:00+00:00",
        description="Events timestamped before this ISO time are refused.",
    )

    @model_validator(mode="after")
    def _keys_are_long_enough(self) -> ServeSettings:
        _check_key_lengths(self.write_keys, "write_keys")
        _check_key_lengths(self.read_keys, "read_keys")
        return self

    @property
    def loopback_only(self) -> bool:
        """Whether `host` is reachable from this machine alone."""
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    @model_validator(mode="after")
    def _floor_is_a_time(self) -> ServeSettings:
        from datetime import datetime

        try:
            datetime.fromisoformat(self.event_floor)
        except ValueError as e:
            raise ValueError(f"serve.event_floor {self.event_floor!r} is not an ISO time") from e
        return self


class Settings(BaseSettings):
    """Everything a run needs. See each section for its fields and defaults."""

    model_config = SettingsConfigDict(
        env_prefix="TAILOR_", env_nested_delimiter="__", extra="forbid"
    )

    workdir: Path = Field(
        Path(".tailor"), description="Root of every output: caches, runs, MLflow, store."
    )
    seed: int = Field(42, description="Seed for splits, sampling and training.")
    data: DataSettings = Field(default_factory=DataSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    # Derived locations, so every stage agrees on where things live.
    @property
    def cache_dir(self) -> Path:
        return self.workdir.resolve() / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.workdir.resolve() / "runs"

    @property
    def tracking_uri(self) -> str:
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.workdir.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        if self.tracking.artifact_root:
            return self.tracking.artifact_root
        if self.tracking_uri.startswith(("http://", "https://")):
            return None  # the server decides (its --artifacts-destination)
        return (self.workdir.resolve() / "mlartifacts").as_uri()

    @property
    def store_url(self) -> str:
        if self.refresh.store_url:
            return self.refresh.store_url
        return f"sqlite:///{self.workdir.resolve() / 'recommendations.db'}"

    @property
    def live_url(self) -> str:
        if self.serve.live_url:
            return self.serve.live_url
        return f"sqlite:///{self.workdir.resolve() / 'live.db'}"

    def flat(self) -> dict[str, Any]:
        """Settings as dotted keys, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json", exclude=SECRET_FIELDS))
        # Connection URLs may carry a password: params never do.
        return {k: mask_url(v) if isinstance(v, str) else v for k, v in out.items()}

    def public_json(self) -> str:
        """The settings as JSON without keys, URLs masked: what a bundle or a log may hold."""
        import json

        data = self.model_dump(mode="json", exclude=SECRET_FIELDS)

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return mask_url(value) if isinstance(value, str) else value

        return json.dumps(walk(data), indent=2)


# Fields that are secrets: never dumped into params, bundles or logs.
SECRET_FIELDS: dict[str, Any] = {
    "serve": {"write_keys", "read_keys"},
    "tracking": {"pseudonym_key"},
}


def mask_url(text: str) -> str:
    """'postgresql://user:secret@host/db' -> 'postgresql://user:***@host/db', and a password
    in a query string ('?password=secret', 'sslpassword', 'token', 'key') -> '***'; other
    text as is."""
    import re

    text = re.sub(r"(\w[\w+.-]*://[^/:@\s]*:)[^@/\s]+@", r"\1***@", text)
    return re.sub(
        r"([?&;](?:[\w.-]*password|[\w.-]*secret|[\w.-]*token|[\w.-]*key)=)[^&;#\s]*",
        r"\1***",
        text,
        flags=re.IGNORECASE,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The default: MovieLens-100K, small model, minutes on 2 CPU cores.
    "laptop": {},
    # Seconds: for tests and trying the pipeline end to end.
    "tiny": {
        "data": {"source": "synthetic"},
        # A child process costs seconds of start-up: more than these fits take.
        "train": {"epochs": 3, "dim": 32, "layers": 1, "max_len": 20, "production_beside": False},
        "eval": {"baselines_beside": False},
    },
    # The training recipe before the one-cycle default (2026-11): up to 40 epochs at a constant
    # learning rate, early-stopped, refit from scratch. For comparisons (benchmarks/train_speed.py).
    "early-stopped": {
        "train": {
            "epochs": 40,
            "patience": 5,
            "batch_size": 128,
            "learning_rate": 4e-3,
            "dropout": 0.2,
            "schedule": "constant",
            "valid_every": 1,
            "refit_epochs": None,
            "refit_learning_rate": None,
            "keep": "best",
            "keep_tolerance": 0.0,
            "threads": None,
            "precision": "fp32",
            "catalogue_precision": "fp32",
            "text_view_weight": 0.3,
        }
    },
    # A GPU box: wider model, more epochs, bf16 encoding.
    "gpu": {
        "embed": {"device": "cuda", "batch_size": 256},
        "train": {"device": "cuda", "dim": 128, "epochs": 60, "batch_size": 256},
    },
}


def load_settings(
    path: Path | None = None, preset: str | None = None, **overrides: Any
) -> Settings:
    """Resolve settings: defaults < preset < TOML file < environment (TAILOR_*) < overrides.

    Nested sections merge field by field, so a file may set `train.epochs` alone.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")

    class _Resolved(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            if preset is not None:
                sources.append(InitSettingsSource(settings_cls, init_kwargs=PRESETS[preset]))
            return tuple(sources)

    resolved = _Resolved(**overrides)
    return Settings.model_validate(resolved.model_dump())
