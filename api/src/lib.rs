//! Capstan's API types: the Kubernetes kinds it serves (from k8s-openapi, v1.33), its own
//! `capstan.dev` kinds, the registry that names them all, and their JSON Schemas.
//!
//! This crate does no IO. The manifest loader, the API server and the CLI all look kinds up
//! here, so a kind added to [`kinds::REGISTRY`] is served, loaded and documented at once.

pub mod capstan;
pub mod cidr;
pub mod cron;
pub mod defaults;
pub mod event;
pub mod gateway;
pub mod kinds;
pub mod merge;
pub mod meta;
pub mod metrics;
pub mod names;
pub mod quantity;
pub mod remotecommand;
pub mod schema;
pub mod selector;
pub mod storage;
pub mod text;
pub mod time;

pub use k8s_openapi;
pub use kinds::{KindInfo, Origin, REGISTRY};
pub use meta::ObjectKey;

/// The Kubernetes version the API reports and whose types it serves.
pub const KUBERNETES_MAJOR: &str = "1";
/// See [`KUBERNETES_MAJOR`].
pub const KUBERNETES_MINOR: &str = "33";
