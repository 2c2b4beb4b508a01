//go:build tools

// Package tools records the kwok command that tests/cluster/build.sh builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
