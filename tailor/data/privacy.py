"""Pseudonymised copies of what may reach MLflow: no raw user ids, no profile fields.

A run's own folder in the workdir keeps the raw files (they are the user's data on the user's
machine); what is logged as an artifact, and so readable by anyone with access to the tracking
server, carries `pseudonymise`d ids instead, unless `tracking.log_personal_data` opts in.
"""

from __future__ import annotations

import contextlib
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


MIN_FILE_KEY_CHARS = 32


def pseudonym_key(configured: str | None, cache_dir: Path) -> bytes:
    """The configured key, or a random one made once per workdir (owner-only file)."""
    if configured:
        return configured.encode()
    path = Path(cache_dir) / "pseudonym.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a private file (0600 from its creation), then linked into place:
        # the link appears complete or not at all, so a second process never reads it half
        # written, and if two race, the first link wins and both use its key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < MIN_FILE_KEY_CHARS:
        raise ValueError(
            f"{path}: the pseudonym key holds {len(key)} characters, at least "
            f"{MIN_FILE_KEY_CHARS} are needed; delete the file to make a new one (pseudonyms "
            "in earlier artifacts will then differ)"
        )
    return key.encode()


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
