"""The registered MLflow model: a pyfunc wrapper over a `tailor.models.bundle.Bundle` folder.

For MLflow users (`mlflow.pyfunc.load_model("models:/<name>@champion")`); it ranks and explains
through the same path as the nightly refresh and the service.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from tailor import columns as C
from tailor.models.bundle import Bundle
from tailor.ranking.explain import reasons_for
from tailor.ranking.rank import RankPolicy, rank_histories


class TailorModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `history` column (item ids, oldest first) and optional `k`.
    Output: one row per recommendation: row, rank, item_id, label, score, reason."""

    def load_context(self, context) -> None:
        self.bundle = Bundle(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        k_default = int((params or {}).get("k", 10))
        bundle = self.bundle
        rows = []
        for row_no, record in enumerate(model_input.to_dict("records")):
            history = bundle.positions(list(record.get("history") or []))
            k = int(record.get("k") or k_default)
            ranked = rank_histories(bundle.model, bundle.index, [history], RankPolicy(k))
            items, scores = ranked.row(0)
            reasons = reasons_for(
                bundle, items, history, [True] * len(history), recent=bundle.model.config.max_len
            )
            for pos, (item, score, reason) in enumerate(zip(items, scores, reasons, strict=True)):
                rows.append(
                    {
                        "row": row_no,
                        C.RANK: pos + 1,
                        C.ITEM_ID: bundle.item_ids[item],
                        C.LABEL: bundle.labels[item],
                        C.SCORE: float(score),
                        C.REASON_TEXT: reason,
                    }
                )
        return pd.DataFrame(rows)
