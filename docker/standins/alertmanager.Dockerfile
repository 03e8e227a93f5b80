# Stand-in for prom/alertmanager:v0.28.1 (compose service `alertmanager`): Debian bookworm's Alertmanager 0.25,
# for machines that reach no registry. BASE_IMAGE is the package layer made by services/containers/standins.py;
# nothing here uses the network.
ARG BASE_IMAGE=citadel/debian-alertmanager:bookworm
FROM ${BASE_IMAGE}

# - /bin/alertmanager, the official image's path (compose execs it), is Debian's prometheus-alertmanager;
# - a default config where the official image keeps it (Debian's sits in /etc/prometheus; compose mounts the
#   project's folder over /etc/alertmanager);
# - the data folder owned by nobody (65534, the official image's user): Docker copies that owner into a new
#   empty named volume, and compose writes the edited config there before starting the server.
RUN ln -s prometheus-alertmanager /usr/bin/alertmanager \
 && install -d /etc/alertmanager \
 && cp /etc/prometheus/alertmanager.yml /etc/alertmanager/alertmanager.yml \
 && install -d -o nobody -g nogroup -m 0755 /alertmanager \
 && test -x /bin/alertmanager

WORKDIR /alertmanager
VOLUME /alertmanager
USER nobody
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
