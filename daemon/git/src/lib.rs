//! Capstan's Git side: reading manifests out of a repository (the Git source, the YAML loader
//! with per-object errors) and computing the desired state of each commit.

pub mod desired;
pub mod diff;
pub mod files;
pub mod fixture;
pub mod hostile;
pub mod manifest;
pub mod problem;
pub mod repo;
pub mod report;
pub mod shape;
pub mod source;
pub mod validate;
pub mod yaml;
