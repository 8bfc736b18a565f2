"""The registered MLflow model: a pyfunc wrapper over a `tailor.bundle.Bundle` folder.

Loaded with `mlflow.pyfunc.load_model("models:/<name>@champion")`; the refresh flow and the
CLI use `unwrap_python_model().bundle` to reach the bundle itself.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from tailor import columns as C
from tailor.bundle import Bundle


class TailorModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `history` column (item ids, oldest first) and optional `k`.
    Output: one row per recommendation: row, rank, item_id, label, score, reason."""

    def load_context(self, context) -> None:
        self.bundle = Bundle(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        k_default = int((params or {}).get("k", 10))
        rows = []
        for row_no, record in enumerate(model_input.to_dict("records")):
            history = self.bundle.positions(list(record.get("history") or []))
            k = int(record.get("k") or k_default)
            result = self.bundle.recommend([history], k)
            items = result.items[0][result.items[0] >= 0]
            reasons = self.bundle.explain(history, items)
            for pos, item in enumerate(items):
                rows.append(
                    {
                        "row": row_no,
                        C.RANK: pos + 1,
                        C.ITEM_ID: self.bundle.item_ids[item],
                        C.LABEL: self.bundle.labels[item],
                        C.SCORE: float(result.scores[0][pos]),
                        C.REASON_TEXT: reasons[pos],
                    }
                )
        return pd.DataFrame(rows)
