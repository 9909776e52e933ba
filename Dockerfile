# The gateway in a container: a virtual environment in /opt/venv, run as the non-root user
# `gateway` (uid 10001), its data in the volume /var/lib/gb28181.
#
#   docker build -t gb28181-gateway .                  # on python:3.11-slim (the default)
#   buildah bud --build-arg BASE=IMAGE -t gb28181-gateway .   # any Debian/Ubuntu base with
#                                                        # python3 (>= 3.11) and python3-venv
#   make image                                         # here: a debootstrapped bookworm base
#
# The configuration is /etc/gb28181/gateway.toml (deploy/image/gateway.toml: SIP and HTTP on
# every address, the store in the volume); mount your own over it, or give `--config FILE`.
# A package index other than PyPI: --build-arg PIP_INDEX_URL=... (and PIP_EXTRA_INDEX_URL,
# PIP_TRUSTED_HOST); behind a TLS-inspecting proxy, its CA bundle: mount it for the build and
# name it, `buildah bud -v /path/ca.crt:/run/build-ca.crt:ro --build-arg PIP_CERT=/run/build-ca.crt`
# (deploy/image/build.sh does so from pip's own setting). Nothing of it stays in the image.
ARG BASE=python:3.11-slim

# The dependencies in a virtual environment, and the build backend in one of its own: these
# layers are reused while only the gateway's code changes (a rebuild then needs no network).
FROM ${BASE} AS deps
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
# An unset build argument arrives as an empty variable, which pip would take as an empty URL.
RUN for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT; do \
        eval "[ -n \"\${$v:-}\" ]" || unset "$v"; \
    done \
    && python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "the base needs Python >= 3.11")' \
    && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
open("requirements.txt", "w").write("\n".join(p["project"]["dependencies"]) + "\n"); \
open("build-requirements.txt", "w").write("\n".join(p["build-system"]["requires"]) + "\n")' \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install -r build-requirements.txt

# The gateway as a wheel.
FROM deps AS wheel
COPY README.md ./
COPY gateway ./gateway
COPY conformance ./conformance
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${BASE}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
# A fixed uid/gid, so that a volume or a bind mount can be given to it beforehand.
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid gateway --home-dir /var/lib/gb28181 --no-create-home \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/gb28181 \
    && chown gateway:gateway /var/lib/gb28181 \
    && chmod 0750 /var/lib/gb28181
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/gb28181-gateway --version
COPY deploy/image/gateway.toml /etc/gb28181/gateway.toml
COPY deploy/image/healthcheck.py /usr/local/lib/gb28181/healthcheck.py

# SIP on one port over UDP and TCP (sip.port); HTTP: API, console, /metrics, /healthz
# (http.port); RTP over UDP and RFC 4571 TCP on the media range (media.port_min..port_max).
EXPOSE 5060/udp 5060/tcp 8080/tcp 30000-39999/udp 30000-39999/tcp
VOLUME ["/var/lib/gb28181"]
WORKDIR /var/lib/gb28181
USER gateway:gateway
# GET /healthz on the HTTP port of the configuration PID 1 runs with (Docker's image format
# keeps it; OCI images drop it: `buildah bud --format docker`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/lib/gb28181/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gb28181-gateway", "run"]
CMD ["--config", "/etc/gb28181/gateway.toml"]
