//! One module per subcommand.

pub mod daemon;
pub mod down;
pub mod history;
pub mod node;
pub mod plan;
pub mod schemas;
pub mod status;
pub mod up;
pub mod validate;
