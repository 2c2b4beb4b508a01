//! Where a node lives in Azure: its scale set (and instance) or availability-set VM, parsed from
//! the node's `spec.providerID`.

use std::fmt;

/// The Azure compute resource behind a Kubernetes node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeResource {
    /// A virtual machine scale set instance: identities are assigned to the whole scale set.
    ScaleSetInstance {
        subscription: String,
        resource_group: String,
        scale_set: String,
        instance_id: String,
    },
    /// A standalone (availability-set) virtual machine.
    VirtualMachine {
        subscription: String,
        resource_group: String,
        name: String,
    },
}

/// The unit identities are assigned to: a whole scale set or one VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssignmentTarget {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub is_scale_set: bool,
}

impl AssignmentTarget {
    /// ARM resource ID of the scale set or VM.
    pub fn arm_id(&self) -> String {
        let kind = if self.is_scale_set {
            "virtualMachineScaleSets"
        } else {
            "virtualMachines"
        };
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{kind}/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

impl AssignmentTarget {
    /// Parses what [`AssignmentTarget::arm_id`] prints (`/subscriptions/<s>/resourceGroups/<rg>/
    /// providers/Microsoft.Compute/virtualMachineScaleSets/<n>` or `.../virtualMachines/<n>`).
    /// Segment names compare case-insensitively; values keep their case.
    pub fn from_arm_id(id: &str) -> Option<Self> {
        let parts: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
        let key = |i: usize, k: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(k));
        if parts.len() != 8
            || !(key(0, "subscriptions")
                && key(2, "resourceGroups")
                && key(4, "providers")
                && key(5, "Microsoft.Compute"))
        {
            return None;
        }
        let is_scale_set = if key(6, "virtualMachineScaleSets") {
            true
        } else if key(6, "virtualMachines") {
            false
        } else {
            return None;
        };
        Some(Self {
            subscription: parts[1].to_string(),
            resource_group: parts[3].to_string(),
            name: parts[7].to_string(),
            is_scale_set,
        })
    }
}

impl fmt::Display for AssignmentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_scale_set { "vmss" } else { "vm" };
        write!(f, "{kind}/{}/{}", self.resource_group, self.name)
    }
}

impl NodeResource {
    /// Parses `azure:///subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/
    /// virtualMachineScaleSets/<vmss>/virtualMachines/<n>` or `.../virtualMachines/<vm>`.
    /// Segment names compare case-insensitively; values keep their case.
    pub fn parse(provider_id: &str) -> Option<Self> {
        let rest = provider_id.strip_prefix("azure://")?;
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let key = |i: usize, k: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(k));
        if !(key(0, "subscriptions")
            && key(2, "resourceGroups")
            && key(4, "providers")
            && key(5, "Microsoft.Compute"))
        {
            return None;
        }
        let (subscription, resource_group) = (parts[1].to_string(), parts[3].to_string());
        match parts.len() {
            10 if key(6, "virtualMachineScaleSets") && key(8, "virtualMachines") => {
                Some(Self::ScaleSetInstance {
                    subscription,
                    resource_group,
                    scale_set: parts[7].to_string(),
                    instance_id: parts[9].to_string(),
                })
            }
            8 if key(6, "virtualMachines") => Some(Self::VirtualMachine {
                subscription,
                resource_group,
                name: parts[7].to_string(),
            }),
            _ => None,
        }
    }

    /// What identities are assigned to for this node.
    pub fn target(&self) -> AssignmentTarget {
        match self {
            Self::ScaleSetInstance {
                subscription,
                resource_group,
                scale_set,
                ..
            } => AssignmentTarget {
                subscription: subscription.clone(),
                resource_group: resource_group.clone(),
                name: scale_set.clone(),
                is_scale_set: true,
            },
            Self::VirtualMachine {
                subscription,
                resource_group,
                name,
            } => AssignmentTarget {
                subscription: subscription.clone(),
                resource_group: resource_group.clone(),
                name: name.clone(),
                is_scale_set: false,
            },
        }
    }
}
