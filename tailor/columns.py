"""Canonical column names, in one place.

Every frame that crosses a stage boundary uses these names; user files are mapped onto them
by `tailor.settings.ColumnMap` when they are read, so nothing downstream ever renames.
"""

# interactions
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
WEIGHT = "weight"  # rating or any positive strength; 1.0 when the input has none
POSITIVE = "positive"  # weight reaches data.positive_min_weight: a target, a "liked" item

# items
TEXT = "text"  # the string the encoder reads, built from the item text template
LABEL = "label"  # a short human name for reasons and the CLI ("Toy Story (1995)")
VECTOR = "vector"  # a precomputed item vector (user-supplied Parquet)

# split
SPLIT = "split"
TRAIN = "train"
VALID = "valid"
TEST = "test"

# quarantine
SOURCE = "source"  # which input file a rejected row came from
REASON = "reason"  # why it was rejected
ROW = "row"  # the rejected row, as JSON, so nothing is lost

# recommendations
RANK = "rank"
SCORE = "score"
REASON_TEXT = "reason"
MODEL_VERSION = "model_version"
