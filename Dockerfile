# The coral agent image (the colony runs from the same image: `coral colony start`).
#
# Built offline: BASE is a Debian bookworm root made locally with debootstrap
# (integration/harness/docker.py does it; it holds python3, python3-venv,
# util-linux, iproute2, procps, tshark's dumpcap and linux-perf), and the
# Python wheels come from the build context (pip wheel on the host), so
# `docker build --network none` works.
#
#   docker build --network none --build-arg BASE=coral-debian:bookworm -t coral-cri-agent:0.1.0 .
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
COPY .cache/wheels /wheels
RUN python3 -m venv /opt/coral \
 && /opt/coral/bin/pip install --no-index --no-cache-dir --find-links /wheels coral-cri-agent \
 && /opt/coral/bin/coral --version

FROM ${BASE}
COPY --from=build /opt/coral /opt/coral
ENV PATH=/opt/coral/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# The agent runs as root (hostPID, setns, the CRI socket); the colony's
# Deployment sets its own non-root user.
ENTRYPOINT ["coral"]
CMD ["--help"]
