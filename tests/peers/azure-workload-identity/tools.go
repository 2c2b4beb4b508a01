//go:build tools

package peers

import (
	_ "github.com/Azure/azure-workload-identity/cmd/azwi"
	_ "github.com/Azure/azure-workload-identity/cmd/webhook"
)
