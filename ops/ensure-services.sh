#!/usr/bin/env bash
# Makes sure this machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer,
# starting whichever is down; the integration and end-to-end tests talk to both.
# Prints one line per service; exits non-zero if one does not answer within WAIT_SECONDS.
set -euo pipefail

WAIT_SECONDS=${WAIT_SECONDS:-60}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" = PONG ]; }

start_postgres() {
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
}

start_redis() {
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

# ensure NAME: if NAME_up fails, run start_NAME, then poll NAME_up for up to WAIT_SECONDS.
ensure() {
  local name=$1
  if "${name}_up"; then
    echo "$name: already up"
    return
  fi
  # A failed start command (say, "already running" while it recovers) is reported; the wait decides.
  "start_${name}" >/dev/null || echo "$name: start command exited $?; waiting anyway" >&2
  local waited=0
  until "${name}_up"; do
    if (( waited >= WAIT_SECONDS )); then
      echo "$name: was down; started it, but it did not answer within ${WAIT_SECONDS}s" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "$name: was down; started it, up after ${waited}s"
}

ensure postgres
ensure redis
