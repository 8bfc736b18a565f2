"""Retry policy shared by every task."""

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tailor.data.sources import DataError

# Failures worth retrying here are transient (a locked SQLite file, a busy disk, a flaky
# mount): 1 s, 2 s, 4 s is enough to ride them out without stalling a nightly run.
RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=1)


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Bad input fails the same way every time: fail at once with the named error."""
    try:
        state.result()
    except DataError:
        return False
    except Exception:
        return True
    return True


def stage_task(**options: Any) -> Callable:
    """@task with the shared retry policy; no caching unless the task asks for it.

    Most stages read files that change between runs under the same path, so input-hash
    caching would be wrong for them; the embedding task opts in with its own content key.
    """
    defaults: dict[str, Any] = {
        "retries": RETRIES,
        "retry_delay_seconds": RETRY_DELAYS,
        "retry_condition_fn": retry_unless_bad_input,
    }
    if "cache_key_fn" not in options:
        defaults["cache_policy"] = NO_CACHE
    return task(**{**defaults, **options})
