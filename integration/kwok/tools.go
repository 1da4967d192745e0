//go:build tools

// Package tools pins the kwok command the benchmark harness builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
