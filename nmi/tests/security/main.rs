//! Attacks on the node agent by a pod on the node or a user with rights in their own namespace
//! only, one test per attack, each named after it. The threat model is docs/security.md.
//! Each attack has its own module; shared helpers are the other nmi tests' (`common`, `live`).

#[path = "../live/mod.rs"]
mod live;
mod memory;
