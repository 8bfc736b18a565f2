"""The scale-out stack on one machine, for trying it and for the integration tests.

    python deployments/stack.py up --dir .stack     # start everything, write .stack/env
    source .stack/env                               # point prefect, mlflow and tailor at it
    python deployments/stack.py down --dir .stack   # stop everything

It starts, each on a free loopback port, with logs under <dir>/logs:

- PostgreSQL (a private cluster made by initdb) with three databases: `prefect` (the Prefect
  server's database), `mlflow` (the tracking server's backend store) and `tailor` (the
  recommendation store);
- an S3 endpoint (moto's server, an emulator) with the bucket `tailor`;
- an MLflow tracking server on PostgreSQL that keeps artifacts in s3://tailor/mlflow and serves
  them to clients (clients need no S3 keys);
- a Prefect server on PostgreSQL, the process work pool `tailor-local`, the deployments of
  deployments/prefect.yaml, and a worker on that pool.

On a cluster each part is a managed service instead; README's "Scale out" says what changes.
Needs `pip install -e '.[scale]'` and PostgreSQL's server binaries (Debian: postgresql-15).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BUCKET = "tailor"
POOL = "tailor-local"
PG_USER = "tailor"
# The emulator accepts any key; real S3 or MinIO take theirs from the usual AWS variables.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# boto3 >= 1.36 sends checksum headers several S3-compatible servers reject.
S3_COMPAT = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} was not found: install the server (Debian: apt-get install "
            "postgresql-15, or run deployments/install-servers.sh)"
        )
    return found


@dataclass
class Stack:
    """Where each server listens and keeps its files; `up` fills in the ports."""

    root: Path
    pg_port: int = 0
    s3_port: int = 0
    mlflow_port: int = 0
    prefect_port: int = 0
    pg_data: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    # addresses

    def pg_url(self, database: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{PG_USER}@127.0.0.1:{self.pg_port}/{database}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def env(self) -> dict[str, str]:
        """What a client of the stack sets: Prefect's API, MLflow's URI, tailor's store."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "TAILOR_TRACKING__TRACKING_URI": self.mlflow_url,
            "TAILOR_REFRESH__STORE_URL": self.pg_url("tailor"),
            **S3_KEYS,
            **S3_COMPAT,
        }

    def child_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(self.root / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "true",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        env.update(self.env())
        env.update(extra)
        return env

    # lifecycle

    def up(self) -> Stack:
        self.root = Path(self.root).resolve()
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        for name in ("pg_port", "s3_port", "mlflow_port", "prefect_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        try:
            self._start_postgres()
            self._start_s3()
            self._start_mlflow()
            self._start_prefect()
            self._deploy()
            self._start_worker()
        except BaseException:
            self.down()
            raise
        self._save()
        return self

    def down(self) -> None:
        for name, pid in reversed(list(self.pids.items())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            if not _wait_gone(pid, 15):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            print(f"stopped {name}", file=sys.stderr)
        self.pids.clear()
        if self.pg_data and Path(self.pg_data).exists():
            subprocess.run(
                [*self._as_pg_user(), _pg_bin("pg_ctl"), "-D", self.pg_data, "-m", "fast", "stop"],
                capture_output=True,
                check=False,
            )
            if self.pg_data.startswith(tempfile.gettempdir()):
                shutil.rmtree(self.pg_data, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "stack.json").unlink()

    def __enter__(self) -> Stack:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # parts

    def _as_pg_user(self) -> list[str]:
        # PostgreSQL refuses to run as root; CI machines are root.
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _start_postgres(self) -> None:
        if os.geteuid() == 0:
            # postgres must reach its directory: not under a 0700 root-owned temp folder.
            self.pg_data = tempfile.mkdtemp(prefix="tailor-pg-")
            shutil.chown(self.pg_data, "postgres", "postgres")
        else:
            self.pg_data = str(self.root / "pg")
        # In its own directory: the server's user may not be able to write under self.root.
        log = Path(self.pg_data) / "postgres.log"
        _run(
            [
                *self._as_pg_user(),
                _pg_bin("initdb"),
                "-D",
                self.pg_data,
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        options = (
            f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_data} "
            "-c fsync=off -c max_connections=200"
        )
        _run(
            [
                *self._as_pg_user(),
                _pg_bin("pg_ctl"),
                *("-D", self.pg_data, "-o", options, "-l", str(log)),
                *("-w", "-t", "60", "start"),
            ]
        )
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.pg_port, user=PG_USER, dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            for database in ("prefect", "mlflow", "tailor"):
                cur.execute(f"CREATE DATABASE {database}")
        conn.close()
        conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user=PG_USER, dbname="prefect")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # Prefect's search indexes
        conn.close()
        print(f"PostgreSQL on 127.0.0.1:{self.pg_port}", file=sys.stderr)

    def _spawn(self, name: str, cmd: list[str], **env: str) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.child_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down() stops its children too
        )
        log.close()
        self.pids[name] = proc.pid

    def _wait_http(self, name: str, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.pids[name]):
                raise RuntimeError(f"{name} exited; see {self.root / 'logs' / name}.log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code < 500:
                    print(f"{name} at {url}", file=sys.stderr)
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f} s")

    def _start_s3(self) -> None:
        moto = Path(sys.executable).with_name("moto_server")
        self._spawn("s3", [str(moto), "-H", "127.0.0.1", "-p", str(self.s3_port)])
        self._wait_http("s3", self.s3_url)
        import boto3

        env = self.env()
        client = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=BUCKET)

    def _start_mlflow(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self._spawn(
            "mlflow",
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                self.pg_url("mlflow"),
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "2",
            ],
        )
        self._wait_http("mlflow", f"{self.mlflow_url}/health")

    def _start_prefect(self) -> None:
        self._spawn(
            "prefect-server",
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.prefect_port),
            ],
            PREFECT_API_DATABASE_CONNECTION_URL=self.pg_url("prefect", driver="asyncpg"),
            PREFECT_UI_ENABLED="false",
        )
        self._wait_http("prefect-server", f"{self.prefect_api}/health")

    def _prefect(self, *args: str) -> None:
        prefect = str(Path(sys.executable).with_name("prefect"))
        done = subprocess.run(
            [prefect, "--no-prompt", *args],
            cwd=REPO,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def _deploy(self) -> None:
        self._prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
        self._prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

    def _start_worker(self) -> None:
        prefect = str(Path(sys.executable).with_name("prefect"))
        self._spawn("worker", [prefect, "worker", "start", "--pool", POOL, "--type", "process"])

    # state between `up` and `down` in two commands

    def _save(self) -> None:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        (self.root / "stack.json").write_text(json.dumps(data, indent=2))
        lines = [f"export {k}={json.dumps(v)}" for k, v in self.env().items()]
        (self.root / "env").write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, root: Path) -> Stack:
        data = json.loads((Path(root) / "stack.json").read_text())
        data["root"] = Path(data["root"])
        return cls(**data)


def run_deployment(stack: Stack, name: str, parameters: dict, timeout: float = 600) -> dict:
    """Run a deployment through the worker and wait: {"id", "state", "message"} of the run."""
    code = (
        "import json, sys\n"
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]),"
        " timeout=float(sys.argv[3]))\n"
        "print(json.dumps({'id': str(run.id), 'state': run.state.type.value,"
        " 'message': run.state.message}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, name, json.dumps(parameters), str(timeout)],
        cwd=REPO,
        env=stack.child_env(),
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    if done.returncode:
        raise RuntimeError(f"running {name} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process is gone for our purposes.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".stack"), help="state and logs")
    args = parser.parse_args(argv)
    if args.command == "up":
        Stack(args.dir).up()
        print(f"stack up; `source {args.dir / 'env'}` to use it:", file=sys.stderr)
        print((args.dir / "env").read_text())
    else:
        Stack.load(args.dir).down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
