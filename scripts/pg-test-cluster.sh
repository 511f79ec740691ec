#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suites: a temporary directory, a free port on 127.0.0.1,
# password authentication, no service manager involved.
#
#   eval "$(scripts/pg-test-cluster.sh start)"   # exports OAI_PROXY_TEST_PG_URL and OAI_PROXY_TEST_PG_DIR
#   scripts/pg-test-cluster.sh pause             # stop the server, keep the data (tests: "PG down")
#   scripts/pg-test-cluster.sh resume            # start it again on the same port
#   scripts/pg-test-cluster.sh stop              # stop it and delete the directory
#
# pause/resume/stop act on $OAI_PROXY_TEST_PG_DIR (or the directory given as the second argument).
# Needs the server binaries (Debian: `apt-get install -y postgresql`). Root cannot run postgres, so as
# root the cluster is owned by and run as the `postgres` user the Debian package creates.
set -euo pipefail

bindir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  if [ -z "$d" ] || [ ! -x "$d/pg_ctl" ]; then
    echo "pg-test-cluster: PostgreSQL server binaries not found; install them (Debian: apt-get install -y postgresql)" >&2
    exit 1
  fi
  echo "$d"
}

# Run a command as the cluster owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

cmd="${1:-}"
dir="${2:-${OAI_PROXY_TEST_PG_DIR:-}}"
bin="$(bindir)"

case "$cmd" in
  start)
    dir="$(mktemp -d "${TMPDIR:-/tmp}/oai-proxy-pg.XXXXXX")"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    password="oai-test-$RANDOM$RANDOM"
    port="$(free_port)"
    echo "$password" >"$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -U oai --auth=scram-sha-256 --pwfile="$dir/pwfile" \
      --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/pwfile"
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
full_page_writes = off
EOF
    echo "$port" >"$dir/port"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
      { cat "$dir/server.log" >&2; exit 1; }
    url="postgres://oai:$password@127.0.0.1:$port/postgres"
    echo "$url" >"$dir/url"
    echo "export OAI_PROXY_TEST_PG_URL='$url'"
    echo "export OAI_PROXY_TEST_PG_DIR='$dir'"
    ;;
  pause)
    [ -n "$dir" ] || { echo "pg-test-cluster: no cluster directory (set OAI_PROXY_TEST_PG_DIR)" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  resume)
    [ -n "$dir" ] || { echo "pg-test-cluster: no cluster directory (set OAI_PROXY_TEST_PG_DIR)" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
  stop)
    [ -n "$dir" ] || exit 0
    if [ -d "$dir/data" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|pause|resume|stop [dir]" >&2
    exit 2
    ;;
esac
