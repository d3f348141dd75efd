#!/usr/bin/env bash
# A local Label Studio 1.23.2 for hitl, in its own virtualenv outside the project's (it pins
# Django, DRF and redis versions that cannot share hitl's environment).
#
#   scripts/label-studio.sh install   create the virtualenv (once; about 95 s, ~1 GB)
#   scripts/label-studio.sh start     install if needed, start on 127.0.0.1, wait until healthy
#   scripts/label-studio.sh stop      stop the server started by `start`
#   scripts/label-studio.sh status    say whether it answers
#   scripts/label-studio.sh env       print the variables hitl needs to reach it
#
# Settings (environment): HITL_LS_VENV, HITL_LS_DATA_DIR, HITL_LS_PORT, HITL_LS_USERNAME,
# HITL_LS_PASSWORD, HITL_LS_START_TIMEOUT (seconds to wait for it to answer, 600). The API token is made on the first start and kept in $HITL_LS_DATA_DIR/api-token.
set -euo pipefail
VERSION=1.23.2
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HITL_LS_VENV:-$HOME/.cache/hitl/label-studio-$VERSION}
DATA=${HITL_LS_DATA_DIR:-$here/var/label-studio}
PORT=${HITL_LS_PORT:-18080}
START_TIMEOUT=${HITL_LS_START_TIMEOUT:-600}
USERNAME=${HITL_LS_USERNAME:-admin@hitl.local}
PIDFILE=$DATA/label-studio.pid
URL=http://127.0.0.1:$PORT

install() {
  # .complete is written only after pip succeeded: an interrupted install is redone.
  if [ -f "$VENV/.complete" ]; then return; fi
  echo "Installing Label Studio $VERSION into $VENV (once) ..."
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "label-studio==$VERSION"
  touch "$VENV/.complete"
}

healthy() { curl -fsS -m 2 "$URL/health" >/dev/null 2>&1; }

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  install
  mkdir -p "$DATA"
  if running_pid >/dev/null && healthy; then echo "Label Studio already running at $URL"; return; fi
  if healthy || (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is taken by another process; set HITL_LS_PORT to a free port" >&2
    exit 1
  fi
  [ -f "$DATA/api-token" ] || python3 -c "import secrets; print(secrets.token_hex(20))" > "$DATA/api-token"
  [ -f "$DATA/password" ] || python3 -c "import secrets; print(secrets.token_urlsafe(12))" > "$DATA/password"
  chmod 600 "$DATA/api-token" "$DATA/password"
  # Label Studio reads bare names too (DEBUG, HOST, PORT, DATABASE_NAME ...): start it with a
  # clean environment holding only what it needs; no analytics, no update checks, no Sentry.
  env -i PATH=/usr/bin:/bin HOME="$DATA" LANG=C.UTF-8 \
    LABEL_STUDIO_BASE_DATA_DIR="$DATA" \
    LABEL_STUDIO_USERNAME="$USERNAME" LABEL_STUDIO_PASSWORD="${HITL_LS_PASSWORD:-$(cat "$DATA/password")}" \
    LABEL_STUDIO_USER_TOKEN="$(cat "$DATA/api-token")" LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
    LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    SSRF_PROTECTION_ENABLED=false \
    "$VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$PORT" \
    >"$DATA/label-studio.log" 2>&1 &
  echo $! >"$PIDFILE"
  # its first start migrates a new SQLite database: a minute on an idle machine, several on a busy one
  local deadline=$((SECONDS + START_TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if running_pid >/dev/null && healthy; then echo "Label Studio $VERSION running at $URL (log: $DATA/label-studio.log)"; return; fi
    if ! running_pid >/dev/null; then echo "Label Studio exited; last lines of its log:" >&2; tail -20 "$DATA/label-studio.log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "Label Studio did not answer within $START_TIMEOUT s (HITL_LS_START_TIMEOUT); see $DATA/label-studio.log" >&2
  exit 1
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "Label Studio stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo "Label Studio answers at $URL"; else echo "Label Studio does not answer at $URL"; exit 1; fi ;;
  env) echo "export LABEL_STUDIO_URL=$URL LABEL_STUDIO_API_KEY=$(cat "$DATA/api-token")"
       echo "# web UI login: $USERNAME / $(cat "$DATA/password" 2>/dev/null)" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
