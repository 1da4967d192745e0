//go:build tools

// Package tools pins the commands the integration harness builds: the control plane
// (kube-apiserver, kube-controller-manager, kube-scheduler), a node (kubelet, kube-proxy)
// and kubectl, all from one k8s.io/kubernetes release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
