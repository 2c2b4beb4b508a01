//! podid-operator: the Managed Identity Controller. It gives pods the user-assigned identities
//! their AzureIdentityBindings grant by assigning them to the node's scale set or VM, and records
//! each (pod, identity) as an AzureAssignedIdentity for the node agent.
//!
//! [`planner`] holds every decision as pure functions; the other modules are its I/O edges.

pub mod bridge;
pub mod bridge_run;
pub mod config;
pub mod controller;
pub mod leader;
pub mod managed;
pub mod managed_run;
pub mod metrics;
pub mod planner;
