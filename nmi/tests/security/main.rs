//! Attacks on the node agent by a pod on the node or a user with rights in their own namespace
//! only, one test per attack, each named after it. The threat model is docs/security.md.
//! Each attack has its own module; shared helpers are the other nmi tests' (`common`, `live`)
//! and `site` (a node kwok does not manage, the agent for it, pods at addresses the test picks).

#[path = "../common/mod.rs"]
mod common;
#[path = "../live/mod.rs"]
mod live;

mod fail_closed;
mod grants;
mod headers;
mod host_network;
mod lenient;
mod memory;
mod node;
mod operator_exemption;
mod other_node;
mod path;
mod pod_ip;
mod relabel;
mod scene;
mod secrets;
mod site;
mod soak;
mod swap;
