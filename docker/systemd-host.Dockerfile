# The systemd test host: a stand-in for a server installed as deploy/systemd/README.md says, booted with
# systemd as PID 1 by tests/containers/test_systemd.py. A test image, not a way to deploy.
#
# Built by services/containers/systemd_host.py (`build_systemd_host`), with the legacy builder and no network:
#   BASE_IMAGE     Debian bookworm with systemd, PostgreSQL 15, Redis 7, Python 3.11 and vLLM's system libraries,
#                  made from Debian's packages on the host (services/containers/debian.py)
#   GATEWAY_IMAGE  docker/gateway.Dockerfile's image: the gateway's dependencies in /opt/venv
#   VLLM_IMAGE     docker/vllm-cpu.Dockerfile's image: vLLM CPU in /opt/venv
# The files it adds of its own are under deploy/systemd/test-host/.

ARG BASE_IMAGE=citadel/systemd-host-base:bookworm
ARG GATEWAY_IMAGE=citadel/gateway:0.1.0
ARG VLLM_IMAGE=citadel/vllm-cpu:0.32.0

FROM ${GATEWAY_IMAGE} AS gateway
FROM ${VLLM_IMAGE} AS vllm

FROM ${BASE_IMAGE}

# README: the service user.
RUN useradd --system --home /opt/citadel --shell /usr/sbin/nologin citadel

# README: `make install install-models`, without a package index. Both venvs were made on the same Debian
# Python 3.11 as this image's (their bin/python is a symlink to /usr/bin/python), and a venv finds itself
# through its pyvenv.cfg, so they work at the paths make gives them; only their console scripts name
# /opt/venv, and the units run none of them (vLLM runs as `python -m`, the `citadel` script is made below).
# First, so that a change in the repository does not copy 4 GB again.
COPY --from=vllm /opt/venv /opt/citadel/.venv-vllm
COPY --from=gateway /opt/venv /opt/citadel/.venv

# README: `git clone <this repository> /opt/citadel`: the working tree as .dockerignore filters it.
COPY . /opt/citadel

# README: `make install`'s `pip install -e .` (no dev extras: a server). The editable install gives the
# `citadel` console script with this venv's interpreter and keeps the code in /opt/citadel, where the gateway
# finds alembic.ini, migrations/ and config/. setuptools is in the venv; `wheel`, which it needs to build,
# comes from Debian's python3-wheel-whl, on the path for this step only. The code is compiled now: the
# units make /opt/citadel read-only, so Python could not cache it at run time.
RUN cd /opt/citadel \
 && PYTHONPATH="$(ls /usr/share/python-wheels/wheel-*.whl)" \
    .venv/bin/python -m pip install --quiet --no-deps --no-index --no-build-isolation -e . \
 && .venv/bin/python -m compileall -q gateway migrations services

# README: the settings. /etc/citadel/citadel.env is a copy of .env.example with the README's edits, here
# appended (a later line wins in an EnvironmentFile); phi3's instance file from vllm-instance.env.example.
RUN cd /opt/citadel \
 && install -d -m 0750 -o root -g citadel /etc/citadel \
 && install -m 0640 -g citadel .env.example /etc/citadel/citadel.env \
 && cat deploy/systemd/test-host/citadel.env >> /etc/citadel/citadel.env \
 && install -m 0640 -g citadel deploy/systemd/test-host/vllm-phi3.env /etc/citadel/vllm-phi3.env

# README: the units, their drop-ins (phi3's limits; the gateway after PostgreSQL and Redis, which run on this
# host; and, in 90-container.conf, the one setting of Debian's Redis unit this container cannot give)
# and `systemctl enable` (the units start at boot, as after `enable --now` and a reboot). Only phi3: one model
# server is what this 2-core machine can spare.
RUN cd /opt/citadel \
 && cp deploy/systemd/citadel-gateway.service deploy/systemd/citadel-vllm@.service /etc/systemd/system/ \
 && cp -r deploy/systemd/test-host/citadel-gateway.service.d "deploy/systemd/test-host/citadel-vllm@phi3.service.d" \
       deploy/systemd/test-host/redis-server.service.d \
       /etc/systemd/system/ \
 && systemctl enable citadel-vllm@phi3.service citadel-gateway.service postgresql.service redis-server.service

# The gateway's PostgreSQL role and database, made once here (the cluster started for this step only, then
# stopped cleanly) rather than by a unit at every boot: on a real host the database administrator makes them
# before the gateway is installed. `citadel migrate` (the gateway's ExecStartPre) then makes the schema.
RUN pg_ctlcluster 15 main start \
 && runuser -u postgres -- psql --quiet --set ON_ERROR_STOP=1 \
      --command "CREATE ROLE citadel_admin LOGIN PASSWORD 'citadel-test-password'" \
      --command "CREATE DATABASE citadel_ai OWNER citadel_admin" \
 && pg_ctlcluster 15 main stop

# systemd as PID 1: `docker stop` sends SIGRTMIN+3, systemd's "halt" (units stop in order).
STOPSIGNAL SIGRTMIN+3
EXPOSE 8000
CMD ["/sbin/init"]
