//! How commands print: a readable text form, or JSON / YAML for scripts.

use serde::Serialize;

/// `println!` for command output: a closed stdout (`capstan history | head`) becomes an error
/// that ends the command quietly (see [`closed_pipe`]) instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use outln;

/// Whether an error is stdout closed by its reader: Unix tools then end at once, quietly.
pub fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML (for the machine formats).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => outln!("{}", serde_saphyr::to_string(value)?.trim_end()),
        Format::Text => unreachable!("text is printed by each command"),
    }
    Ok(())
}
