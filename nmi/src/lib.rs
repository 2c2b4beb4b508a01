//! podid-nmi, the node agent: answers pods' IMDS token requests with the identities bound to
//! them, in place of aad-pod-identity's NMI. Pure rules live in small modules (request parsing,
//! the wait for assignment, selection, the token cache, iptables rendering); `server` and `cluster`
//! wire them to HTTP and the API server.

pub mod agent;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod entra;
pub mod federated;
pub mod iptables;
pub mod metrics;
pub mod reply;
pub mod request;
pub mod resolve;
pub mod server;
pub mod token;
pub mod view;
pub mod wait;
