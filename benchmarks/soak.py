"""A long run of the real server under mixed load, with a model swap every few minutes.

    python benchmarks/soak.py --workdir DIR [--minutes 20] [--swap-every 120] [--out DIR]

DIR must hold a champion and a published store (`tailor run --workdir DIR`). The benchmark
registers the champion's bundle once more as a new version and, every `--swap-every` seconds,
moves the champion alias between the two and asks the server to reload (`POST
/admin/reload`): each swap loads a whole model while requests keep coming. At the end the
alias is put back where it was (the extra version stays registered).

The server runs as `tailor serve` does, in its own process, with a throw-away live log. Five
scenarios run open-loop at fixed rates the whole time (latency counts from when a request was
due): stored reads, live sessions of known users, free-text queries, item inserts and events.
Every acknowledged event is checked in the live log afterwards (each exactly as often as it
was acknowledged). The server's resident memory is sampled every few seconds.

Prints a table per minute (memory, p99 per scenario, errors) and the targets: memory after
warm-up (the third minute) grows under 10 %, each scenario's p99 stays within 1.5x its
second minute's (the first holds the start-up), no server error, every acknowledged event
logged once. Writes soak.json and soak.png
(memory and p99s over time, swaps marked) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import WORDS, Connection, cpu_name, free_port, start_server, wait_ready

RATES = {  # requests per second per scenario
    "stored read": 8.0,
    "live session": 4.0,
    "query": 2.0,
    "item insert": 1.0,
    "events": 5.0,
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    def __init__(self, port: int, users: list[str], catalogue: list[str], seconds: float) -> None:
        self.port, self.users, self.catalogue, self.seconds = port, users, catalogue, seconds
        # One seeded stream per scenario: what each sends does not depend on timing.
        self.rngs = {name: random.Random(f"{name}-42") for name in RATES}
        self.samples: list[tuple[str, float, float, int]] = []  # scenario, t, ms, status
        self.acked: Counter = Counter()
        self.swaps: list[tuple[float, float, str]] = []  # t, seconds, version
        self.memory: list[tuple[float, float]] = []
        self.start = 0.0

    def request(self, scenario: str, i: int) -> tuple[str, str, bytes | None, list]:
        rng = self.rngs[scenario]
        if scenario == "stored read":
            return "GET", f"/users/{rng.choice(self.users)}/recommendations?k=20", None, []
        if scenario == "live session":
            body = {"user_id": rng.choice(self.users), "session": rng.sample(self.catalogue, 10)}
            return "POST", "/recommend", json.dumps(body).encode(), []
        if scenario == "query":
            words = " ".join(rng.sample(WORDS, 3))
            return "POST", "/recommend", json.dumps({"query": f"{words} {i}", "k": 20}).encode(), []
        if scenario == "item insert":
            words = " ".join(rng.sample(WORDS, 4)).title()
            item = {"item_id": f"soak-{i}", "text": f"{words} (2026). Genres: Drama"}
            return "POST", "/items", json.dumps({"items": [item]}).encode(), []
        # events: live users (a few hundred, so the live-user bound and restores are exercised
        # only if set low) and known ones
        user = f"soak-user-{rng.randrange(500)}" if rng.random() < 0.5 else rng.choice(self.users)
        events = [
            {"user_id": user, "item_id": rng.choice(self.catalogue), "kind": "view"}
            for _ in range(rng.randint(1, 5))
        ]
        pairs = [(e["user_id"], e["item_id"]) for e in events]
        return "POST", "/events", json.dumps({"events": events}).encode(), pairs

    async def scenario(self, name: str, rate: float) -> None:
        conns: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(4):
            c = Connection("127.0.0.1", self.port)
            await c.open()
            conns.put_nowait(c)
        n = int(rate * self.seconds)

        async def one(i: int) -> None:
            due = self.start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            method, path, body, pairs = self.request(name, i)
            conn = await conns.get()
            status = 0
            try:
                status, _ = await conn.request(method, path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn = Connection("127.0.0.1", self.port)  # a broken connection: a new one
                await conn.open()
            finally:
                conns.put_nowait(conn)
            self.samples.append((name, due - self.start, (time.perf_counter() - due) * 1e3, status))
            if status == 200:
                self.acked.update(pairs)

        await asyncio.gather(*(one(i) for i in range(n)))
        while not conns.empty():
            conns.get_nowait().close()

    async def swapper(self, every: float, promote, versions: list[str]) -> None:
        k = 0
        while True:
            await asyncio.sleep(self.start + (k + 1) * every - time.perf_counter())
            if time.perf_counter() - self.start > self.seconds - 5:
                return
            version = versions[k % 2]
            began = time.perf_counter()
            await asyncio.to_thread(promote, version)
            c = Connection("127.0.0.1", self.port)
            await c.open()
            status, body = await c.request("POST", "/admin/reload", b"")
            c.close()
            if status != 200 or not json.loads(body)["reloaded"]:
                raise SystemExit(f"the reload to version {version} failed: {status} {body!r}")
            self.swaps.append((began - self.start, time.perf_counter() - began, version))
            k += 1

    async def sampler(self, pid: int) -> None:
        while time.perf_counter() - self.start < self.seconds + 2:
            self.memory.append((time.perf_counter() - self.start, rss_mb(pid)))
            await asyncio.sleep(5.0)

    async def run(self, pid: int, every: float, promote, versions: list[str]) -> None:
        self.start = time.perf_counter() + 0.1
        swapper = asyncio.create_task(self.swapper(every, promote, versions))
        await asyncio.gather(self.sampler(pid), *(self.scenario(n, r) for n, r in RATES.items()))
        swapper.cancel()


def per_minute(soak: Soak, minutes: int) -> list[dict]:
    rows = []
    for m in range(minutes):
        row: dict = {"minute": m + 1}
        window = [s for s in soak.samples if m * 60 <= s[1] < (m + 1) * 60]
        for name in RATES:
            ms = [s[2] for s in window if s[0] == name]
            row[name] = float(np.percentile(ms, 99)) if ms else float("nan")
        row["errors"] = sum(1 for s in window if s[3] >= 500 or s[3] == 0)
        mem = [mb for t, mb in soak.memory if m * 60 <= t < (m + 1) * 60]
        row["rss_mb"] = float(np.median(mem)) if mem else float("nan")
        row["swaps"] = sum(1 for t, _, _ in soak.swaps if m * 60 <= t < (m + 1) * 60)
        rows.append(row)
    return rows


def plot(soak: Soak, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    t = np.array([m[0] for m in soak.memory]) / 60
    top.plot(t, [m[1] for m in soak.memory], color="black")
    top.set_ylabel("server resident memory, MB")
    minutes = [r["minute"] - 0.5 for r in rows]
    for name in RATES:
        bottom.plot(minutes, [r[name] for r in rows], marker="o", label=name)
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency per minute, ms")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        for when, _, _ in soak.swaps:
            ax.axvline(when / 60, color="grey", linestyle=":", linewidth=1)
    top.set_title("tailor serve under mixed load, a model swap at each dotted line")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="holds a champion and a store")
    parser.add_argument("--minutes", type=int, default=20)
    parser.add_argument("--swap-every", type=float, default=120.0, help="seconds between swaps")
    parser.add_argument("--out", default=None, help="soak.json and soak.png (default: workdir)")
    args = parser.parse_args()

    import mlflow

    from tailor.data.livelog import LiveLog
    from tailor.data.load import load_clean
    from tailor.serving.store import RecommendationStore
    from tailor.settings import load_settings
    from tailor.tracking.registry import promote, register_bundle, resolve_version
    from tailor.tracking.runs import client_for

    workdir = Path(args.workdir)
    out = Path(args.out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings(workdir=workdir)
    store = RecommendationStore(settings.store_url)
    users = store.users()
    store.dispose()
    if not users:
        raise SystemExit(f"no published recommendations in {workdir}: run `tailor run` there")
    catalogue = load_clean(settings).items["item_id"].to_list()

    client = client_for(settings.tracking_uri)
    name, alias = settings.tracking.model_name, settings.tracking.champion_alias
    champion = resolve_version(client, name, alias, None)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = mlflow.artifacts.download_artifacts(f"models:/{name}/{champion}", dst_path=tmp)
        experiment = client.get_experiment_by_name(settings.tracking.experiment).experiment_id
        run = client.create_run(experiment, tags={"mlflow.runName": "soak: a second version"})
        second = register_bundle(
            client, run.info.run_id, Path(bundle) / "artifacts" / "bundle", name, {}
        )
        client.set_terminated(run.info.run_id)

    seconds = args.minutes * 60.0
    with tempfile.TemporaryDirectory() as tmp:
        live_db = Path(tmp) / "live.db"
        port = free_port()
        proc = start_server(workdir, port, live_db)
        try:
            asyncio.run(wait_ready("127.0.0.1", port, proc, 600))
            soak = Soak(port, users, catalogue, seconds)
            print(
                f"soak: {args.minutes} min, versions {champion} <-> {second} every "
                f"{args.swap_every:.0f} s, {sum(RATES.values()):.0f} requests/s",
                flush=True,
            )
            asyncio.run(
                soak.run(
                    proc.pid,
                    args.swap_every,
                    lambda v: promote(client, name, alias, v),
                    [second, champion],
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            client.set_registered_model_alias(name, alias, champion)
        events = LiveLog(f"sqlite:///{live_db}").events()
    logged = Counter(zip(events["user_id"].to_list(), events["item_id"].to_list(), strict=True))
    lost = sum(max(0, n - logged[pair]) for pair, n in soak.acked.items())
    extra = sum(max(0, logged[pair] - soak.acked[pair]) for pair in logged)

    rows = per_minute(soak, args.minutes)
    print(f"\n## Soak: {args.minutes} min on {cpu_name()}, {len(soak.swaps)} model swaps\n")
    print("| minute | RSS MB | " + " | ".join(f"{n} p99 ms" for n in RATES) + " | errors | swaps |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in RATES) + " | ---: | ---: |")
    for r in rows:
        cells = " | ".join(f"{r[n]:.1f}" for n in RATES)
        print(f"| {r['minute']} | {r['rss_mb']:.0f} | {cells} | {r['errors']} | {r['swaps']} |")

    base = rows[min(2, len(rows) - 1)]["rss_mb"]
    growth = rows[-1]["rss_mb"] / base - 1
    # The reference minute is the second: the first holds the start-up (first requests load
    # the encoder's session, fill caches), which would make any later minute look fine.
    ref = rows[min(1, len(rows) - 1)]
    later = rows[min(1, len(rows) - 1) :]
    worst = {n: max(r[n] for r in later) / ref[n] for n in RATES}
    errors = sum(r["errors"] for r in rows)
    swap_s = [s for _, s, _ in soak.swaps]
    targets = [
        ("memory growth after minute 3", f"{growth:+.1%}", growth < 0.10),
        *(
            (f"{n}: worst minute's p99 / minute 2's", f"{worst[n]:.2f}x", worst[n] <= 1.5)
            for n in RATES
        ),
        ("server errors (5xx, dropped connections)", str(errors), errors == 0),
        (
            "acknowledged events missing from the log / logged twice",
            f"{lost} / {extra}",
            lost == 0 and extra == 0,
        ),
    ]
    print("\n| target | measured | met |\n| --- | ---: | --- |")
    for what, value, met in targets:
        print(f"| {what} | {value} | {'yes' if met else 'NO'} |")
    print(
        f"\n{len(soak.samples)} requests, {sum(soak.acked.values())} events acknowledged; "
        f"swaps took {min(swap_s, default=0):.1f}-{max(swap_s, default=0):.1f} s each"
    )
    plot(soak, rows, out / "soak.png")
    (out / "soak.json").write_text(
        json.dumps(
            {
                "cpu": cpu_name(),
                "minutes": rows,
                "swaps": soak.swaps,
                "memory": soak.memory,
                "targets": [{"target": t, "measured": v, "met": m} for t, v, m in targets],
            },
            indent=2,
        )
    )
    print(f"wrote {out / 'soak.png'} and {out / 'soak.json'}")
    return 0 if all(m for _, _, m in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
