#!/usr/bin/env bash
# The servers the integration tier starts that PyPI does not ship: PostgreSQL's server binaries
# (Debian's postgresql-15; Prefect's server wants >= 14.9 and the pg_trgm extension it ships).
# The S3 endpoint (moto), MLflow and Prefect come from the project's [integration] extra.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "PostgreSQL server binaries present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL's server is not installed; as root: apt-get install postgresql-15" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
echo "installed $(/usr/lib/postgresql/15/bin/postgres --version)"
