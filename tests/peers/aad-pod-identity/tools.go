//go:build tools

package peers

import (
	_ "github.com/Azure/aad-pod-identity/cmd/demo"
	_ "github.com/Azure/aad-pod-identity/cmd/mic"
	_ "github.com/Azure/aad-pod-identity/cmd/nmi"
)
