"""Pseudonymised copies of what may reach MLflow: no raw user ids, no profile fields.

A run's own folder in the workdir keeps the raw files (they are the user's data on the user's
machine); what is logged as an artifact, and so readable by anyone with access to the tracking
server, carries `pseudonymise`d ids instead, unless `tracking.log_personal_data` opts in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from tailor import columns as C

PREFIX = "p_"


def pseudonym_key(configured: str | None, cache_dir: Path) -> bytes:
    """The configured key, or a random one made once per workdir (owner-only file)."""
    if configured:
        return configured.encode()
    path = Path(cache_dir) / "pseudonym.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with 0600 in one step, so no other user can read it even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonymise(ids: Iterable[str], key: bytes) -> list[str]:
    """A keyed hash per id: the same id gives the same pseudonym within a workdir, and
    without the key nobody can tell which id it was (no dictionary attack on short ids)."""
    return [PREFIX + hmac.new(key, str(i).encode(), hashlib.sha256).hexdigest()[:16] for i in ids]


def public_quarantine(
    quarantine: pl.DataFrame, key: bytes, users_source: str | None
) -> pl.DataFrame:
    """The quarantine with user ids pseudonymised and, for rows of the users file, every
    profile field withheld (its names kept, so the reason can still be read)."""
    rows = []
    for source, reason, raw in quarantine.select(C.SOURCE, C.REASON, C.ROW).iter_rows():
        row = json.loads(raw)
        if isinstance(row, dict):
            if row.get(C.USER_ID) is not None:
                row[C.USER_ID] = pseudonymise([row[C.USER_ID]], key)[0]
            if users_source is not None and source == users_source:
                row = {
                    name: value if name == C.USER_ID else "<withheld>"
                    for name, value in row.items()
                }
        rows.append((source, reason, json.dumps(row)))
    return pl.DataFrame(rows, schema=quarantine.schema, orient="row")
