//! Capstan's manifest layer, pure (it touches no Git): YAML with positions and budgets, shape
//! and value checks, the loader with per-object errors, the desired state of a tree and the plan
//! between two, field diffs, and the reports `validate` and `plan` print. The Git side
//! (capstan-git) reads trees and hands their files here.

pub mod desired;
pub mod diff;
pub mod files;
pub mod hostile;
pub mod ingress;
pub mod manifest;
pub mod networkpolicy;
pub mod problem;
pub mod rbac;
pub mod report;
pub mod shape;
pub mod validate;
pub mod yaml;
