#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1:$PORT for amgmt's tests, the benchmark and trying the fleet mode.
# usage: pg_up.sh DIR PORT      start (initdb on the first start); writes DIR/url (mode 0600):
#                               postgresql://amgmt:<generated password>@127.0.0.1:PORT/amgmt
#        pg_up.sh DIR stop      stop the server and remove its data (the cluster is throwaway)
#        pg_up.sh DIR halt      stop the server, keep its data (`pg_up.sh DIR PORT` starts it again)
# needs: the Debian `postgresql` package (its binaries in /usr/lib/postgresql/<version>/bin; PG_BIN overrides).
# PG_UP_OPTIONS: extra server options, e.g. "-c fsync=off" for tests that do not measure anything.
# PostgreSQL refuses to run as root: run by root, the server runs as `nobody` (PG_UP_USER overrides), with its
# data in a private dir of that user's (its path in DIR/datadir), since DIR may sit where `nobody` cannot go.
# The password is generated here and only written to DIR/url and the cluster; the script never prints it.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR PORT | $0 DIR stop | $0 DIR halt" >&2; exit 2; }
D=$(realpath -m "$1"); PORT=$2
if [ -z "${PG_BIN:-}" ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
[ -x "${PG_BIN:-}/initdb" ] || { echo "pg_up.sh: no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 3; }

as_owner() {  # run a PostgreSQL binary as the cluster's owner
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid="$PG_UID" --regid="$PG_GID" --clear-groups -- "$@"
  else
    "$@"
  fi
}
if [ "$(id -u)" = 0 ]; then
  PG_USER=${PG_UP_USER:-nobody}
  PG_UID=$(id -u "$PG_USER"); PG_GID=$(id -g "$PG_USER")
fi

if [ "$PORT" = stop ] || [ "$PORT" = halt ]; then
  [ -f "$D/datadir" ] || exit 0
  DATA=$(cat "$D/datadir")
  if [ -f "$DATA/cluster/postmaster.pid" ]; then
    as_owner "$PG_BIN/pg_ctl" -D "$DATA/cluster" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_owner "$PG_BIN/pg_ctl" -D "$DATA/cluster" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  [ "$PORT" = halt ] && exit 0
  # The data dir is ours only when it is the one this script made (its name says so).
  case "$DATA" in */amgmt-pg.*|"$D"/data) rm -rf "$DATA" ;; esac
  rm -f "$D/datadir" "$D/url"
  exit 0
fi
case "$PORT" in ''|*[!0-9]*) echo "pg_up.sh: PORT must be a number, not $PORT" >&2; exit 2 ;; esac

mkdir -p "$D"
chmod 0700 "$D"
if [ ! -f "$D/datadir" ]; then
  if [ "$(id -u)" = 0 ]; then
    DATA=$(mktemp -d "${TMPDIR:-/tmp}/amgmt-pg.XXXXXXXX")
    chown "$PG_UID:$PG_GID" "$DATA"
  else
    DATA="$D/data"; mkdir -p "$DATA"
  fi
  chmod 0700 "$DATA"
  echo "$DATA" > "$D/datadir"
  PASSWORD=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
  PWFILE="$DATA/.pw"
  ( umask 077; echo "$PASSWORD" > "$PWFILE" )
  [ "$(id -u)" = 0 ] && chown "$PG_UID:$PG_GID" "$PWFILE"
  as_owner "$PG_BIN/initdb" -D "$DATA/cluster" -U amgmt --pwfile="$PWFILE" --auth-host=scram-sha-256 \
    --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 >"$D/initdb.log" 2>&1 \
    || { tail -n 20 "$D/initdb.log" >&2; exit 1; }
  rm -f "$PWFILE"
  ( umask 077; echo "postgresql://amgmt:$PASSWORD@127.0.0.1:$PORT/amgmt" > "$D/url" )
  FIRST=1
else
  DATA=$(cat "$D/datadir"); FIRST=0
  # The URL names the port of this start.
  sed -i "s/@127\.0\.0\.1:[0-9]*\//@127.0.0.1:$PORT\//" "$D/url"
fi

# shellcheck disable=SC2086
as_owner "$PG_BIN/pg_ctl" -D "$DATA/cluster" -l "$DATA/server.log" -w -t 60 start -o \
  "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DATA -c max_connections=200 ${PG_UP_OPTIONS:-}" \
  >/dev/null 2>&1 || { echo "pg_up.sh: the server did not start on port $PORT:" >&2; tail -n 20 "$DATA/server.log" >&2; exit 1; }
if [ "$FIRST" = 1 ]; then
  # trust over the socket in the private (0700) data dir: only its owner (and root) can reach it.
  as_owner "$PG_BIN/psql" -h "$DATA" -p "$PORT" -U amgmt -d postgres -qAt -c "CREATE DATABASE amgmt" \
    >/dev/null 2>"$D/createdb.log" || { cat "$D/createdb.log" >&2; exit 1; }
fi
echo "PostgreSQL on 127.0.0.1:$PORT (URL in $D/url)"
