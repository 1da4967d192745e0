//go:build tools

// Package tools pins the CoreDNS command the integration harness builds: the real node's
// cluster DNS, so pods resolve Service names (coral-colony.coral-system.svc) as in any cluster.
package tools

import _ "github.com/coredns/coredns"
