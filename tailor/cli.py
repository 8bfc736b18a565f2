"""`tailor` command line: run the pipeline, refresh, and read recommendations.

Flows, the server and the store are imported inside the commands on purpose: Prefect reads
its settings from the environment when it is imported, so `configure_environment` must run
first, and `tailor recommend` should not pay for importing torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tailor.env import configure_environment
from tailor.settings import load_settings, mask_url


def _settings(args: argparse.Namespace):
    overrides = {}
    if getattr(args, "workdir", None):
        overrides["workdir"] = Path(args.workdir)
    return load_settings(
        Path(args.config) if args.config else None, preset=args.preset, **overrides
    )


def _prepare(args: argparse.Namespace):
    settings = _settings(args)
    configure_environment(settings.workdir)
    return settings


def _prepare_flow(args: argparse.Namespace):
    """`_prepare`, and Prefect's temporary API (if one is needed) starting in the background
    while the command imports its flow; call the returned wait before running the flow."""
    settings = _prepare(args)
    from flows.api import start_temporary_api

    return settings, start_temporary_api()


def cmd_run(args: argparse.Namespace) -> int:
    settings, api_ready = _prepare_flow(args)
    from flows.pipeline import train_and_refresh

    api_ready()
    result = train_and_refresh(settings=settings)
    _print_train(result.train, settings)
    _print_refresh(result.refresh)
    _print_where(settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    settings, api_ready = _prepare_flow(args)
    from flows.train import train

    api_ready()
    _print_train(train(settings=settings), settings)
    _print_where(settings)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    settings, api_ready = _prepare_flow(args)
    from flows.search import search

    api_ready()
    result = search(settings=settings)
    print(result.table.read_text())
    chosen = ", ".join(f"train.{k}={v}" for k, v in result.best_params.items())
    print(f"best on validation: {chosen} (valid NDCG@10 {result.best_score:.4f})")
    print(f"MLflow run {result.run_id}: one child run per trial")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the champion alias by hand: for when the gate had no like-for-like evidence."""
    from tailor.tracking.registry import promote
    from tailor.tracking.runs import client_for

    settings = _settings(args)
    t = settings.tracking
    client = client_for(settings.tracking_uri)
    version = str(client.get_model_version(t.model_name, args.version).version)
    promote(client, t.model_name, t.champion_alias, version)
    client.set_model_version_tag(t.model_name, version, "tailor.promoted", "by hand")
    print(f"{t.model_name} version {version} is now {t.champion_alias!r} (promoted by hand)")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    settings, api_ready = _prepare_flow(args)
    from flows.refresh import nightly_refresh

    api_ready()
    _print_refresh(nightly_refresh(settings=settings, model_version=args.model_version))
    _print_where(settings)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from tailor.serving.store import RecommendationStore

    store = RecommendationStore(settings.store_url)
    try:
        current = store.current()
        if current is None:
            print("no recommendations published yet: run `tailor run` first", file=sys.stderr)
            return 1
        recs = store.read(args.user_id, limit=args.k)
    finally:
        store.dispose()
    if recs.height == 0:
        print(
            f"user {args.user_id!r} has no recommendations in the published batch", file=sys.stderr
        )
        return 1
    print(
        f"recommendations for user {args.user_id} "
        f"(model version {current.model_version}, "
        f"published {current.created_at:%Y-%m-%d %H:%M} UTC)"
    )
    for row in recs.iter_rows(named=True):
        print(f"{row['rank']:>3}. {row['label']}  [{row['score']:.3f}]  {row['reason']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import json
    import os

    import uvicorn

    from tailor.serving.http import create_app

    settings = _prepare(args)
    serve = {}
    for name in ("host", "port", "model_version", "poll_seconds", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            serve[name] = value
    if serve:
        settings = settings.model_copy(
            update={
                "serve": settings.serve.model_validate({**settings.serve.model_dump(), **serve})
            }
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    s = settings.serve
    try:
        app = create_app(settings)  # refuses open reads beyond loopback before anything listens
    except ValueError as e:
        print(f"tailor serve: {e}", file=sys.stderr)
        return 2
    options = {
        "host": s.host,
        "port": s.port,
        "log_level": "warning",
        "access_log": False,
        # Beyond this many connections and requests at once, 503 at once rather than a queue
        # that grows until memory runs out.
        "limit_concurrency": s.max_concurrency,
        "timeout_keep_alive": 5,
    }
    workers = f", {s.workers} worker processes" if s.workers > 1 else ""
    print(f"tailor serve: http://{s.host}:{s.port}  (docs at /docs, readiness at /ready{workers})")
    if s.workers == 1:
        uvicorn.run(app, **options)
        return 0
    # Each worker imports the app and resolves the settings again from the same arguments.
    os.environ["TAILOR_SERVE_ARGS"] = json.dumps(
        {
            "config": str(Path(args.config).resolve()) if args.config else None,
            "preset": args.preset,
            "workdir": str(settings.workdir.resolve()),
            "serve": {k: v for k, v in serve.items() if k != "workers"},
        }
    )
    del app
    uvicorn.run(
        "tailor.serving.http:app_from_environment", factory=True, workers=s.workers, **options
    )
    return 0


def cmd_where(args: argparse.Namespace) -> int:
    _print_where(_settings(args))
    return 0


def _print_train(result, settings) -> None:
    print("\n== training run", result.run_id)
    print(
        f"   metrics: the evaluation fit; registered: the production fit {result.production_run_id}"
    )
    print(f"   items embedded {result.n_embedded}, reused from cache {result.n_reused}")
    print(
        f"   model version {result.model_version}: "
        f"{'promoted to champion' if result.promoted else 'not promoted'} ({result.gate_reason})"
    )
    columns = [
        ("NDCG@10", "test_ndcg_at_10"),
        ("Recall@20", "test_recall_at_20"),
        ("tail-rec@20", "test_tail_recall_at_20"),
        ("cover@20", "test_coverage_at_20"),
        ("APLT@20", "test_aplt_at_20"),
        ("cold-rec@20", "cold_recall_at_20"),
    ]
    print(f"   {'model':<14}" + "".join(f"{title:>12}" for title, _ in columns))
    for name, values in result.metrics.items():
        cells = "".join(f"{values.get(key, float('nan')):>12.4f}" for _, key in columns)
        print(f"   {name:<14}{cells}")
    for claim, sig in result.significance.items():
        verdict = "significant" if sig["low"] > 0 else "not significant"
        print(
            f"   {claim}: {sig['ratio']:.2f}x {sig['vs']}, 95 % interval of the gain "
            f"[{sig['low']:+.4f}, {sig['high']:+.4f}] ({verdict})"
        )
    live = result.live
    if "new_user_recall_at_20" in live:
        print(
            f"   new users (profile only): recall@20 {live['new_user_recall_at_20']:.4f} vs "
            f"most-popular {live['new_user_popular_recall_at_20']:.4f}"
        )
    if "inserted_cold_recall_at_20" in live:
        print(
            f"   new items inserted like the service does: cold recall@20 "
            f"{live['inserted_cold_recall_at_20']:.4f} (in the bundle: "
            f"{live['bundle_cold_recall_at_20']:.4f})"
        )
    print(f"   outputs: {result.out_dir}")


def _print_refresh(result) -> None:
    print("\n== nightly refresh", result.run_id)
    print(
        f"   published {result.n_rows} recommendations for {result.n_users} users "
        f"from model version {result.model_version} (coverage {result.coverage:.3f}, "
        f"tail share {result.tail_share:.3f})"
    )


def _print_where(settings) -> None:
    workdir = settings.workdir.resolve()
    prefect_home = os.environ.get("PREFECT_HOME", str(workdir / "prefect"))
    print("\n== where things are")
    print(f"   run outputs     {settings.runs_dir}")
    # Printed URLs never show a password.
    print(f"   MLflow store    {mask_url(settings.tracking_uri)}")
    print(f"   recommendations {mask_url(settings.store_url)}")
    print(f"   live log        {mask_url(settings.live_url)}")
    print("   read one user:  tailor recommend 42")
    s = settings.serve
    print(f"   live service:   tailor serve   -> http://{s.host}:{s.port}/docs")
    print(
        "   MLflow UI:      MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1 "
        f"--backend-store-uri {mask_url(settings.tracking_uri)} --port 5000"
        "   -> http://127.0.0.1:5000"
    )
    print(
        f"   Prefect UI:     PREFECT_HOME={prefect_home} prefect server start"
        "   -> http://127.0.0.1:4200"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailor", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (see README)")
    common.add_argument("--preset", help="named preset: laptop (default), tiny, gpu")
    common.add_argument("--workdir", help="where outputs go (default .tailor)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "run", parents=[common], help="train, evaluate, register, then refresh"
    ).set_defaults(func=cmd_run)
    sub.add_parser(
        "train", parents=[common], help="train, evaluate and register only"
    ).set_defaults(func=cmd_train)
    sub.add_parser(
        "search", parents=[common], help="grid-search model hyper-parameters on validation"
    ).set_defaults(func=cmd_search)
    refresh = sub.add_parser("refresh", parents=[common], help="recompute every user's list")
    refresh.add_argument("--model-version", help="registered version (default: champion)")
    refresh.set_defaults(func=cmd_refresh)
    promote = sub.add_parser(
        "promote", parents=[common], help="make a registered version the champion by hand"
    )
    promote.add_argument("version", help="registered model version")
    promote.set_defaults(func=cmd_promote)
    rec = sub.add_parser("recommend", parents=[common], help="one user's stored recommendations")
    rec.add_argument("user_id")
    rec.add_argument("-k", type=int, default=None, help="how many (default: all stored)")
    rec.set_defaults(func=cmd_recommend)
    serve = sub.add_parser("serve", parents=[common], help="start the real-time HTTP service")
    serve.add_argument("--host", help="interface (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, help="TCP port (default 8000)")
    serve.add_argument("--model-version", help="serve this version (default: follow the champion)")
    serve.add_argument("--poll-seconds", type=float, help="how often to check the alias")
    serve.add_argument(
        "--workers", type=int, help="worker processes on the port, sharing the live log"
    )
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("where", parents=[common], help="print where outputs and UIs are").set_defaults(
        func=cmd_where
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
