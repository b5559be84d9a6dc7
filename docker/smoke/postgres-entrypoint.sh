#!/bin/sh
# First start: a cluster whose superuser is $POSTGRES_USER with $POSTGRES_PASSWORD, and
# the database $POSTGRES_DB, encoded UTF-8 as the official image's (the base image sets
# no locale: initdb would make it SQL_ASCII); every start: PostgreSQL on all addresses.
set -eu
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
    initdb -D "$data" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$data/pg_hba.conf"
    # Reachable only through a private socket meanwhile: pg_isready must not see it yet.
    pg_ctl -D "$data" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start \
        >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        createdb -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    pg_ctl -D "$data" -m fast -w stop >/dev/null
fi
exec postgres -D "$data" -c listen_addresses='*'
