# shellcheck shell=bash
# Starts a throwaway PostgreSQL cluster for the anya-storage tests. Meant to be `source`d:
#
#     source .ci/postgres.sh      # installs Debian's postgresql if missing, starts a cluster,
#                                 # exports ANYA_TEST_POSTGRES_URL
#     cargo test ...
#     stop_postgres               # stops the cluster and removes its directory
#
# The cluster lives in a fresh directory under ${TMPDIR:-/tmp} (anya-pg.XXXXXX), listens on
# 127.0.0.1 on the first free port from 54329 up and on a Unix socket inside that directory,
# and trusts every connection (loopback only; it holds nothing but test data). As root, it runs
# as the unprivileged `postgres` user, since the server refuses to run as root.
#
# Safe to source twice in one shell (the first cluster is stopped) and next to clusters left by
# earlier runs: a directory whose owning shell is gone is cleaned up, one whose owner still
# runs is left alone and its port skipped.
#
# This file changes no shell options of the caller; on failure it prints why and returns 1.

_anya_pg_log() { echo "postgres.sh: $*" >&2; }

# Runs a command as the cluster owner, from inside the cluster directory (the server tools
# refuse a working directory they cannot read).
_anya_pg_as_owner() {
    local dir=$1
    shift
    if [ "$(id -u)" = 0 ]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

_anya_pg_install() {
    if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        _anya_pg_log "PostgreSQL server binaries missing and not root: install the postgresql package"
        return 1
    fi
    _anya_pg_log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || return 1
    apt-get install -y -qq postgresql >/dev/null || return 1
}

# Stops the cluster in $1 (if one runs there) and removes the directory.
_anya_pg_remove() {
    local dir=$1 bin=$2
    if [ -f "$dir/data/postmaster.pid" ]; then
        _anya_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" stop -m fast -w -t 30 >/dev/null 2>&1 \
            || _anya_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" stop -m immediate -w -t 30 >/dev/null 2>&1
    fi
    rm -rf -- "$dir"
}

# Removes clusters whose owning shell has exited without calling stop_postgres.
_anya_pg_reap_stale() {
    local bin=$1 dir owner
    for dir in "${TMPDIR:-/tmp}"/anya-pg.*; do
        [ -d "$dir" ] || continue
        owner=$(cat "$dir/owner" 2>/dev/null || true)
        if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then
            continue
        fi
        _anya_pg_log "removing stale cluster $dir"
        _anya_pg_remove "$dir" "$bin"
    done
}

_anya_pg_port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_postgres() {
    _anya_pg_install || { _anya_pg_log "could not install postgresql"; return 1; }
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        _anya_pg_log "no initdb under /usr/lib/postgresql/*/bin"
        return 1
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres || return 1
    fi

    # A cluster this shell started before: stop it, so that sourcing twice gives one server.
    if [ -n "${ANYA_PG_DIR:-}" ] && [ -d "$ANYA_PG_DIR" ]; then
        _anya_pg_remove "$ANYA_PG_DIR" "$bin"
    fi
    _anya_pg_reap_stale "$bin"

    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/anya-pg.XXXXXX") || return 1
    echo "$$" >"$dir/owner"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir" || return 1
    fi
    if ! _anya_pg_as_owner "$dir" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        _anya_pg_log "initdb failed:"
        cat "$dir/initdb.log" >&2
        rm -rf -- "$dir"
        return 1
    fi

    local port started=""
    for port in $(seq 54329 54428); do
        _anya_pg_port_busy "$port" && continue
        rm -f -- "$dir/server.log"
        # Each test opens its own pool: allow plenty of connections.
        if _anya_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c max_connections=300" \
            start >/dev/null 2>&1; then
            started=$port
            break
        fi
        # Lost a race for the port (or another failure): make sure nothing half-started stays.
        _anya_pg_as_owner "$dir" "$bin/pg_ctl" -D "$dir/data" stop -m immediate -w >/dev/null 2>&1
        if ! grep -q -i -e "could not bind" -e "address already in use" "$dir/server.log" 2>/dev/null; then
            _anya_pg_log "postgres failed to start:"
            tail -n 20 "$dir/server.log" >&2
            rm -rf -- "$dir"
            return 1
        fi
    done
    if [ -z "$started" ]; then
        _anya_pg_log "no free port in 54329..54428"
        rm -rf -- "$dir"
        return 1
    fi

    local tries=0
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$started" -U postgres; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            _anya_pg_log "server on port $started not ready after 30 s"
            _anya_pg_remove "$dir" "$bin"
            return 1
        fi
        sleep 0.5
    done
    if ! _anya_pg_as_owner "$dir" "$bin/createdb" -h 127.0.0.1 -p "$started" -U postgres anya_test; then
        _anya_pg_log "createdb anya_test failed"
        _anya_pg_remove "$dir" "$bin"
        return 1
    fi

    export ANYA_PG_DIR="$dir" ANYA_PG_BIN="$bin"
    export ANYA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$started/anya_test"
    _anya_pg_log "$("$bin/postgres" --version) on 127.0.0.1:$started ($dir)"
}

# Stops the cluster started by start_postgres and removes its directory; safe to call twice.
stop_postgres() {
    if [ -n "${ANYA_PG_DIR:-}" ] && [ -d "$ANYA_PG_DIR" ]; then
        _anya_pg_remove "$ANYA_PG_DIR" "${ANYA_PG_BIN:?}"
    fi
    unset ANYA_PG_DIR ANYA_PG_BIN ANYA_TEST_POSTGRES_URL
}

start_postgres || return 1
