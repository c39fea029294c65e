//! One module per subcommand.

pub mod daemon;
pub mod node;
pub mod plan;
pub mod schemas;
pub mod up;
pub mod validate;
