//go:build tools

// Package tools records the command tests/cluster/build.sh builds for the oldest supported
// Kubernetes, so `go mod tidy` keeps its dependencies in go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
