//! One module per subcommand.

pub mod daemon;
pub mod plan;
pub mod schemas;
pub mod validate;
