//! Attacks on the node agent by a pod on the node or a user with rights in their own namespace
//! only, one test per attack, each named after it. The threat model is docs/security.md.
//! Each attack has its own module; shared helpers are the other nmi tests' (`common`, `live`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../live/mod.rs"]
mod live;

mod fail_closed;
mod grants;
mod lenient;
mod memory;
mod node;
mod operator_exemption;
mod path;
mod pod_ip;
mod scene;
mod secrets;
mod soak;
mod swap;
