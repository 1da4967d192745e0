# The two commands a newcomer needs: `make demo` to see it work, `make test` to run every test (each sets up
# what it needs first: `make setup`'s steps, skipped when their stamp says they are done).
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

.PHONY: setup setup-debian setup-python images kube-binaries image-inputs proto lint unit integration test bench clean chart-golden \
	demo

setup: setup-debian setup-python images kube-binaries image-inputs

# A set-up step leaves a stamp (gone with `make clean`), so a second `make setup` or `make demo` skips it:
# the Debian packages are installed again when their list changes (the stamp's name holds its hash), the
# Python dependencies when pyproject.toml does.
STAMPS ?= $(CURDIR)/.cache/stamps
DEBIAN_STAMP := $(STAMPS)/debian-$(shell echo '$(DEBIAN_PACKAGES)' | sha256sum | cut -c1-12)
setup-debian: $(DEBIAN_STAMP)
setup-python: $(STAMPS)/python

$(DEBIAN_STAMP):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES)
	@mkdir -p $(@D) && touch $@

$(STAMPS)/python: pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@mkdir -p $(@D) && touch $@

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
# The image's wheels: the dependencies' again when pyproject.toml changes; the project's own (2 s, offline)
# when its code does, so the image holds the code under test.
image-inputs: .cache/docker/bookworm-rootfs.tar $(STAMPS)/project-wheel

$(STAMPS)/wheels: pyproject.toml
	rm -rf .cache/wheels && $(PY) -m pip wheel -q --disable-pip-version-check -w .cache/wheels .
	@mkdir -p $(@D) && touch $@

WHEEL_SOURCES := $(shell find coral_base cri_agent coral_colony coral_cli -name '*.py' 2>/dev/null)
$(STAMPS)/project-wheel: $(STAMPS)/wheels $(WHEEL_SOURCES)
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w .cache/wheels .
	@mkdir -p $(@D) && touch $@

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

# Lint, then every test (unit + integration) in one pytest run, after whatever set-up step is not done yet.
test: setup lint
	$(PY) -m pytest -q

# The product's main job on this machine, as root (containerd needs it): a private containerd, a colony, the
# agent and sample pods; prints `coral services`, `coral agent events` and the status page, runs until Ctrl-C,
# then removes everything. DEMO_ONCE=1: print, clean up and exit. Needs only part of `make setup`.
demo: setup-debian setup-python images
	$(PY) -m integration.harness.demo$(if $(filter-out 0,$(DEMO_ONCE)), --once)

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
	$(PY) -m bench.hostile --agents 1000 --services 50 --strangers 200 --seconds 60 --output BENCHMARKS.md
	$(PY) -m bench.node --replicas 100 --output BENCHMARKS.md

clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
