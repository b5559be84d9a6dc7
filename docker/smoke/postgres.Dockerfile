# PostgreSQL from Debian's packages, for the smoke test where no image registry answers:
# the official image's contract (POSTGRES_USER/PASSWORD/DB, /var/lib/postgresql/data).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/postgresql/*/bin /usr/local/pgbin \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
ENV PATH=/usr/local/pgbin:$PATH
COPY postgres-entrypoint.sh /usr/local/bin/
# hadolint ignore=DL3066
USER postgres
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
