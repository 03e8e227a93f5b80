# Stand-in for postgres:18-bookworm (compose service `postgres`): Debian bookworm's PostgreSQL 15, for machines
# that reach no registry. BASE_IMAGE is the package layer made by services/containers/standins.py (no cluster
# in it); nothing here uses the network.
ARG BASE_IMAGE=citadel/debian-postgres:bookworm
FROM ${BASE_IMAGE}

# The server's own binaries first on the PATH (postgres, initdb, pg_ctl, psql, pg_isready), as in the official
# image, rather than Debian's pg_wrapper, which looks for clusters under /etc/postgresql.
ENV PG_MAJOR=15
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
# The official 18 image's layout: one folder per major version under the volume, so data of another major
# version in the same volume is left alone.
ENV PGDATA=/var/lib/postgresql/15/docker
# The official image's locale (collation of the databases initdb makes).
ENV LANG=en_US.utf8

# - the en_US.UTF-8 locale, compiled from the locales package's sources (what the official image does);
# - listen on every interface: initdb copies this sample into the new cluster (the official image's edit);
# - the socket folder and the volume's root owned by postgres: the server runs as postgres from the start,
#   and Docker copies the owner of /var/lib/postgresql into a new empty named volume;
# - the folder of first-start scripts the official entrypoint runs.
RUN localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8 \
 && sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample \
 && grep -q "^listen_addresses = '\*'" /usr/share/postgresql/15/postgresql.conf.sample \
 && install -d -o postgres -g postgres -m 3777 /var/run/postgresql \
 && install -d -o postgres -g postgres -m 0755 /var/lib/postgresql \
 && install -d /docker-entrypoint-initdb.d
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh

VOLUME /var/lib/postgresql
# Non-root from the start (the official entrypoint starts as root, then drops to postgres itself).
USER postgres
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown (sessions ended, a clean checkpoint), as in the official image.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
