"""The main job: train (and maybe promote) a model, then refresh everyone's recommendations."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.common import resolve_settings
from flows.refresh import RefreshResult, nightly_refresh
from flows.train import TrainResult, train
from tailor.settings import Settings


class PipelineResult(BaseModel):
    train: TrainResult
    refresh: RefreshResult


@flow(name="train-and-refresh", log_prints=True)
def train_and_refresh(
    settings: Settings | None = None, preset: str | None = None, config: str | None = None
) -> PipelineResult:
    """Both flows as subflows; the refresh serves whichever version is champion afterwards."""
    settings = resolve_settings(settings, preset, config)
    trained = train(settings=settings)
    refreshed = nightly_refresh(settings=settings)
    return PipelineResult(train=trained, refresh=refreshed)


if __name__ == "__main__":
    train_and_refresh()
