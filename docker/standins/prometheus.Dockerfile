# Stand-in for prom/prometheus:v2.55.1 (compose service `prometheus`): Debian bookworm's Prometheus 2.42, for
# machines that reach no registry. BASE_IMAGE is the package layer made by services/containers/standins.py;
# nothing here uses the network.
ARG BASE_IMAGE=citadel/debian-prometheus:bookworm
FROM ${BASE_IMAGE}

# /bin/prometheus and /bin/promtool, the official image's paths, are Debian's /usr/bin ones already (/bin is a
# link to /usr/bin). The data folder is owned by nobody (65534, the official image's user): Docker copies that
# owner into a new empty named volume. The official image also ships a default config in /etc/prometheus:
# Debian's package has one there (compose mounts the project's over it).
RUN install -d -o nobody -g nogroup -m 0755 /prometheus \
 && test -x /bin/prometheus && test -f /etc/prometheus/prometheus.yml

WORKDIR /prometheus
VOLUME /prometheus
USER nobody
EXPOSE 9090
# As in the official image: compose gives only flags, as the command.
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
