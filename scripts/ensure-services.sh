#!/usr/bin/env bash
# Start the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) when they are down; wait until
# they answer (bounded). Tests create their own databases and key prefixes on them.
set -uo pipefail
wait_for() {  # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "error: $what did not come up within 30 s" >&2
  return 1
}
if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q || exit 1
  fi
else
  echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi
if command -v redis-server >/dev/null 2>&1; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis
    wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping || exit 1
  fi
else
  echo "error: Redis is not installed (apt-get install redis-server)" >&2
  exit 1
fi
