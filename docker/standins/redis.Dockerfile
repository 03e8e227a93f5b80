# Stand-in for redis:7.4-alpine (compose service `redis`): Debian bookworm's redis-server 7.0, for machines
# that reach no registry. BASE_IMAGE is the package layer made by services/containers/standins.py; nothing
# here uses the network.
ARG BASE_IMAGE=citadel/debian-redis:bookworm
FROM ${BASE_IMAGE}

# The official image's working directory and data volume, owned by the server's user (Debian's package made it).
RUN mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh

WORKDIR /data
VOLUME /data
# Non-root from the start (the official entrypoint starts as root, then drops to redis itself).
USER redis
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
