#!/bin/sh
# Entrypoint of the PostgreSQL stand-in (docker/standins/postgres.Dockerfile): the official image's first-start
# initialisation, run as postgres. When $PGDATA holds no cluster: initdb with POSTGRES_USER as the superuser
# (password POSTGRES_PASSWORD), POSTGRES_DB created, /docker-entrypoint-initdb.d run, password authentication
# (scram-sha-256) for every TCP client. Then the server replaces this script (PID 1 gets the stop signal).
set -eu

# `docker run IMAGE -c work_mem=64MB` means the server with those options.
case "${1:-}" in
	-*) set -- postgres "$@" ;;
esac

# POSTGRES_PASSWORD_FILE (a Docker secret) stands for POSTGRES_PASSWORD, as in the official image.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
	POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		echo "error: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
		echo "  (set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without a password)" >&2
		exit 1
	fi
	mkdir -p "$PGDATA"
	chmod 700 "$PGDATA"
	# Local (socket) connections stay trusted, initdb's default: `docker exec ... psql` needs no password.
	# POSTGRES_INITDB_ARGS is split into words on purpose (e.g. "--data-checksums --locale=C").
	# The superuser gets a password only when one is given (POSTGRES_HOST_AUTH_METHOD=trust may go without).
	# shellcheck disable=SC2086
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		printf '%s\n' "$POSTGRES_PASSWORD" |
			initdb --username="$POSTGRES_USER" --pwfile=/dev/stdin ${POSTGRES_INITDB_ARGS:-}
	else
		initdb --username="$POSTGRES_USER" ${POSTGRES_INITDB_ARGS:-}
	fi
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

	# A server on the socket only, so that no client over TCP sees it half set up.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
	run_sql() { psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --no-password "$@"; }
	if [ "$POSTGRES_DB" != postgres ]; then
		printf 'CREATE DATABASE :"db";\n' | run_sql --dbname postgres --set db="$POSTGRES_DB"
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
			*.sql) run_sql --dbname "$POSTGRES_DB" -f "$f" ;;
			*.sql.gz) gunzip -c "$f" | run_sql --dbname "$POSTGRES_DB" ;;
			*) ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
