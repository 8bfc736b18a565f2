from pathlib import Path

from prefect import get_run_logger

from tailor.settings import Settings
from tailor.stages import data as stage
from tailor.stages.data import PreparedData
from tasks.common import stage_task


@stage_task()
def prepare_data(settings: Settings, out_dir: Path, hold_out_cold: bool = True) -> PreparedData:
    """Load, clean (rejects to quarantine) and split the configured data."""
    prepared = stage.prepare_data(settings, out_dir, hold_out_cold=hold_out_cold)
    logger = get_run_logger()
    for source, report in prepared.report.items():
        logger.info(
            "%s: %s rows in, %s kept, rejected %s",
            source,
            report.get("rows_in"),
            report.get("rows_out"),
            report.get("rejected") or "none",
        )
    return prepared
