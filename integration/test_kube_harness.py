"""The control plane the Kubernetes tests run against: real etcd, real kube-apiserver, RBAC on."""

from __future__ import annotations

from integration.harness.kube import AGENT_USER, ControlPlane


def test_admin_may_do_anything_and_unbound_identities_nothing(control_plane: ControlPlane) -> None:
    control_plane.kubectl("create", "namespace", "harness-check")
    assert "harness-check" in control_plane.kubectl("get", "namespaces", "-o", "name")
    for who in ("agent", "nobody"):
        answer = control_plane.kubectl("auth", "can-i", "list", "pods", who=who, check=False).strip()
        assert answer == "no", (who, answer)
    whoami = control_plane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", who="agent")
    assert whoami == AGENT_USER
