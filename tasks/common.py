"""Retry policy shared by every task."""

from prefect.tasks import exponential_backoff

from tailor.data import DataError

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
