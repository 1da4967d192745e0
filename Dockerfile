# The coral agent image (the colony runs from the same image: `coral colony start`).
#
#   docker build -t coral-cri-agent:0.1.0 .
#
# The base is Debian bookworm. What the agent and its operations run on the
# node is installed from Debian's archive when the base lacks it: python3 and
# its venv, util-linux (nsenter, setpriv), iproute2, procps, tshark's dumpcap,
# linux-perf and the CA certificates. A base that already holds them (the
# test harness imports a debootstrap root under the default name) installs
# nothing, so the build then needs no network.
#
# The agent itself: from the wheels in .cache/wheels when `make image-inputs`
# made them (offline, `docker build --network none .` works), else built from
# this source tree with pip's defaults.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS base
RUN set -eu; need=""; \
    python3 -c 'import ensurepip' 2>/dev/null || need="$need python3 python3-venv"; \
    for tool in nsenter:util-linux setpriv:util-linux ip:iproute2 ps:procps dumpcap:tshark perf:linux-perf; do \
        command -v "${tool%%:*}" >/dev/null || need="$need ${tool#*:}"; \
    done; \
    [ -e /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    if [ -n "$need" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM base AS build
COPY . /src
RUN python3 -m venv /opt/coral \
 && if ls /src/.cache/wheels/coral_cri_agent-*.whl >/dev/null 2>&1; then \
        /opt/coral/bin/pip install --no-index --no-cache-dir --find-links /src/.cache/wheels coral-cri-agent; \
    else \
        /opt/coral/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/coral/bin/coral --version

FROM base
COPY --from=build /opt/coral /opt/coral
ENV PATH=/opt/coral/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# The agent runs as root (hostPID, setns, the CRI socket); the colony's
# Deployment sets its own non-root user.
ENTRYPOINT ["coral"]
CMD ["--help"]
