# The gateway image: small, non-root, no vLLM. The runtime dependencies of pyproject.toml are installed
# in a build stage; the final stage gets that virtual environment and only the files the gateway reads
# (the package, the migrations, alembic.ini and config/), laid out as in the repository because the code
# finds alembic.ini, migrations/ and config/ next to the package.
#
#   docker build -f docker/gateway.Dockerfile -t citadel/gateway:0.1.0 .
#   docker build --build-arg PYTHON_IMAGE=citadel/python:3.11-bookworm ...   # no registry: the stand-in base
#   docker run --rm -e CITADEL_ADMIN_KEY=... -p 8000:8000 citadel/gateway:0.1.0        # `citadel serve`
#   docker run --rm -e DATABASE_URL=postgresql://... citadel/gateway:0.1.0 migrate

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml /tmp/pyproject.toml
# The wheelhouse (`make wheelhouse`: the pinned wheels, downloaded on the host with its own pip settings). When
# it holds wheels, pip installs from it alone (--no-index: no network in the build); when it is empty (only
# its .keep file), from the package index as configured in the base image.
COPY docker/wheelhouse/gateway/ /tmp/wheels/
# Only [project].dependencies (all pinned): not the dev or models extras, and no build of the package.
# This layer is rebuilt only when pyproject.toml or the wheelhouse changes.
RUN /opt/venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
      /opt/venv/bin/pip install --no-index --find-links /tmp/wheels -r /tmp/requirements.txt; \
    else \
      /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    fi \
 && rm -rf /tmp/wheels

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent citadel \
 && mkdir -p /var/lib/citadel/audit-spool \
 && chown -R citadel:citadel /var/lib/citadel \
 && printf '#!/bin/sh\nexec /opt/venv/bin/python -m gateway "$@"\n' > /usr/local/bin/citadel \
 && chmod 0755 /usr/local/bin/citadel
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY gateway/ gateway/
COPY migrations/ migrations/
COPY config/ config/
# Byte-code compiled now: the code is read-only for the citadel user, so it could not cache it later.
RUN /opt/venv/bin/python -m compileall -q gateway migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    CITADEL_HOST=0.0.0.0 \
    CITADEL_CONFIG_PATH=/app/config/models.yaml \
    CITADEL_AUDIT_SPOOL_DIR=/var/lib/citadel/audit-spool \
    CITADEL_QDRANT_PATH=/var/lib/citadel/qdrant
USER citadel
EXPOSE 8000
# The gateway's state: the audit spool (rows wait here while PostgreSQL is away) and, only without QDRANT_URL,
# Qdrant's embedded store. Compose puts a named volume on it.
VOLUME ["/var/lib/citadel"]
ENTRYPOINT ["citadel"]
CMD ["serve"]
