# Sourced by scripts/test and scripts/bench: a throwaway PostgreSQL server for one command.
#
# start_throwaway_postgres: initdb and pg_ctl from PATH or the usual install folders; as the
# `postgres` user when run as root (PostgreSQL refuses to run as root); a temporary folder; a free
# port. Exports DATABASE_URL. stop_throwaway_postgres stops it and removes the folder.

find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  local dir
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/opt/postgresql@*/bin \
             /usr/local/opt/postgresql@*/bin /Applications/Postgres.app/Contents/Versions/latest/bin; do
    [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && { echo "$dir"; return; }
  done
  return 1
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  return 1
}

start_throwaway_postgres() {
  local bin port as=()
  bin=$(find_pg_bin) || {
    echo "scripts/test: DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found." >&2
    echo "  Install PostgreSQL (e.g. apt-get install postgresql), or set DATABASE_URL to a server you own." >&2
    exit 1
  }
  port=$(free_port)
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vfi-test-pg.XXXXXX")
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-sync >"$PG_TMP/initdb.log" 2>&1 || {
    cat "$PG_TMP/initdb.log" >&2; exit 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 start \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null || {
    cat "$PG_TMP/server.log" >&2; exit 1; }
  PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop)
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "scripts/test: throwaway PostgreSQL on port $port ($PG_TMP)" >&2
}

stop_throwaway_postgres() {
  if [[ -n "${PG_TMP:-}" ]]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}

