//! One module per subcommand.

pub mod plan;
pub mod schemas;
pub mod validate;
