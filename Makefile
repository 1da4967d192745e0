# The two commands a newcomer needs: `make setup` once, then `make test`.
PY ?= python3
DEBIAN_PACKAGES := containerd runc containernetworking-plugins busybox-static iptables iproute2 \
	util-linux procps sqlite3 chromium fonts-dejavu-core tshark linux-perf gcc libc6-dev etcd-server etcd-client \
	debootstrap docker.io prometheus
IMAGE_DIR ?= $(CURDIR)/.cache/images
# kube-apiserver, kubectl and a node's binaries (kubelet, kube-scheduler, kube-controller-manager,
# kube-proxy) from the k8s.io/kubernetes Go module (integration/kube), helm from its module
# (integration/helm), kwok and CoreDNS likewise (integration/kwok, integration/coredns): built once into a cache directory; each
# binary is its own file target, so a second `make setup` builds nothing.
KUBE_BIN ?= $(CURDIR)/.cache/kube/bin
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

.PHONY: setup setup-debian setup-python images kube-binaries image-inputs proto lint unit integration test bench clean chart-golden

setup: setup-debian setup-python images kube-binaries image-inputs

setup-debian:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES)

setup-python:
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'

# Offline OCI images for the harness (pause + busybox workload); no registry.
images:
	$(PY) -m integration.harness.images $(IMAGE_DIR)

KUBE_COMMANDS := kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager kube-proxy
kube-binaries: $(addprefix $(KUBE_BIN)/,$(KUBE_COMMANDS)) $(KUBE_BIN)/helm $(KUBE_BIN)/kwok $(KUBE_BIN)/coredns

# Stamped with the module's version, as a release build is: a cluster that says v0.0.0-master fails every
# chart's kubeVersion check (helm install), which a user's cluster never would.
KUBE_VERSION := $(shell sed -n 's|^require k8s.io/kubernetes \(v[0-9.]*\).*|\1|p' integration/kube/go.mod)
KUBE_SEMVER := $(subst ., ,$(patsubst v%,%,$(KUBE_VERSION)))
KUBE_LDFLAGS := $(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(pkg).gitVersion=$(KUBE_VERSION) -X $(pkg).gitMajor=$(word 1,$(KUBE_SEMVER)) \
	-X $(pkg).gitMinor=$(word 2,$(KUBE_SEMVER)) -X $(pkg).gitTreeState=clean)
$(addprefix $(KUBE_BIN)/,$(KUBE_COMMANDS)): integration/kube/go.mod integration/kube/go.sum Makefile
	cd integration/kube && $(GO) build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/$(@F)

$(KUBE_BIN)/helm: integration/helm/go.mod integration/helm/go.sum
	cd integration/helm && $(GO) build -trimpath -o $@ helm.sh/helm/v3/cmd/helm

$(KUBE_BIN)/kwok: integration/kwok/go.mod integration/kwok/go.sum
	cd integration/kwok && $(GO) build -trimpath -o $@ sigs.k8s.io/kwok/cmd/kwok

# The real node's cluster DNS (integration/harness/node.py), so Service names resolve in pods.
$(KUBE_BIN)/coredns: integration/coredns/go.mod integration/coredns/go.sum
	cd integration/coredns && $(GO) build -trimpath -o $@ github.com/coredns/coredns

# Offline inputs of the image build (integration/test_image.py): a Debian root from Debian's archive, and wheels.
DOCKER_ROOT_PACKAGES := python3,python3-venv,util-linux,iproute2,procps,tshark,linux-perf,ca-certificates
image-inputs: .cache/docker/bookworm-rootfs.tar
	rm -rf .cache/wheels && $(PY) -m pip wheel -q --disable-pip-version-check -w .cache/wheels .

.cache/docker/bookworm-rootfs.tar:
	rm -rf .cache/docker/rootfs && mkdir -p .cache/docker
	debootstrap --variant=minbase --include=$(DOCKER_ROOT_PACKAGES) bookworm .cache/docker/rootfs
	tar -C .cache/docker/rootfs -cf $@ . && rm -rf .cache/docker/rootfs

proto:
	$(PY) proto/generate.py

lint:
	ruff check .
	mypy
	lint-imports

unit:
	$(PY) -m pytest tests -q

integration:
	$(PY) -m pytest integration -q

# Lint, then every test (unit + integration) in one pytest run.
test: lint
	$(PY) -m pytest -q

# Rewrite deploy/helm/coral-node-agent/ci/golden/ from ci/*-values.yaml (then review the diff).
chart-golden:
	CORAL_UPDATE_GOLDEN=1 $(PY) -m pytest integration/test_chart.py -q -k golden

bench:
	$(PY) -m bench.discovery --pods 250 --output BENCHMARKS.md
	$(PY) -m bench.ops --output BENCHMARKS.md
	$(PY) -m bench.colony --agents 1000 --services 250 --output BENCHMARKS.md
	$(PY) -m bench.enrollment --agents 1000 --services 250 --output BENCHMARKS.md
	$(PY) -m bench.fallback --nodes 20 --pods-per-node 250 --output BENCHMARKS.md
	$(PY) -m bench.metrics --pods 250 --output BENCHMARKS.md
	$(PY) -m bench.node --replicas 100 --output BENCHMARKS.md

clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache
