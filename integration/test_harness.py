"""The harness itself: real pods with kubelet's metadata, and a clean teardown."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path

from coral_base.wire.cri.runtime.v1 import api_pb2
from integration.harness.cgroups import cgroup_mounts
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ImageSet
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec, wait_http

HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))


def test_a_pod_gets_an_ip_on_the_bridge_and_serves_http(containerd: PrivateContainerd, pods: PodFactory) -> None:
    pod = pods.create_pod("web", containers=(HTTPD,))
    assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(containerd.subnet)
    assert wait_http(pod.ip, 8080, "/healthz") == b"ok\n"


def test_containers_live_in_kubelet_style_cgroups(containerd: PrivateContainerd, pods: PodFactory) -> None:
    pod = pods.create_pod("cg")
    cgroup = Path(f"/proc/{pods.container_pid(pod.container_ids[0])}/cgroup").read_text()
    assert re.search(rf"/kubepods/besteffort/pod{pod.uid}/[0-9a-f]{{64}}$", cgroup, re.MULTILINE)


def test_sandbox_carries_kubelets_labels_and_the_pods_own(pods: PodFactory) -> None:
    pod = pods.create_pod("labelled", namespace="shop", labels={"app": "cart"}, containers=(HTTPD,))
    [sandbox] = [s for s in pods.stub.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items if s.id == pod.sandbox_id]
    [container] = pods.stub.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod.sandbox_id))
    ).containers
    assert dict(sandbox.labels) == {
        "app": "cart",
        "io.kubernetes.pod.name": "labelled",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": pod.uid,
    }
    assert json.loads(container.annotations["io.kubernetes.container.ports"]) == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    ]


def test_pods_survive_a_containerd_crash_and_restart(fresh_containerd: PrivateContainerd) -> None:
    factory = PodFactory(fresh_containerd)
    pod = factory.create_pod("survivor", containers=(HTTPD,))
    fresh_containerd.kill()
    fresh_containerd.restart()
    sandboxes = factory.stub.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [(s.id, s.state) for s in sandboxes] == [(pod.sandbox_id, api_pb2.SANDBOX_READY)]
    assert wait_http(pod.ip, 8080).startswith(b"<h1>")
    factory.close()


def test_stop_leaves_no_mount_bridge_shim_or_cgroup_behind(tmp_path: Path, harness_images: ImageSet) -> None:
    runtime = PrivateContainerd(tmp_path / "ctrd", images=harness_images).start()
    factory = PodFactory(runtime)
    pod = factory.create_pod("leftover", containers=(HTTPD,))
    runtime.stop()

    mounts = Path("/proc/self/mountinfo").read_text()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    shims = subprocess.run(["pgrep", "-f", str(runtime.socket_path)], capture_output=True, text=True).stdout
    cgroups = [m for m in cgroup_mounts() if (m / "kubepods" / "besteffort" / f"pod{pod.uid}").exists()]
    assert (str(runtime.dir) in mounts, runtime.bridge in links, shims, cgroups, runtime.dir.exists()) == (
        False,
        False,
        "",
        [],
        False,
    )
