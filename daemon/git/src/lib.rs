//! Capstan's Git side, over git2: reading a repository's trees (local, or a mirror of a remote),
//! the Git source that follows a branch, and the refs and notes Capstan writes back. The
//! manifests themselves are read by capstan-manifest.

pub mod fixture;
pub mod notes;
pub mod refs;
pub mod repo;
pub mod revert;
pub mod source;
pub mod status_branch;
pub mod tree;
