//go:build tools

// Package tools records the commands tests/cluster/build.sh builds for the oldest supported
// Kubernetes, so `go mod tidy` keeps its dependencies in go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
