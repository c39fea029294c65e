//! `capstan schemas`: writes the JSON Schema of every kind, for editors and CI linters.

use crate::output::outln;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

pub fn run(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = capstan_api::schema::all_files();
    for (name, schema) in &files {
        let path = out.join(name);
        std::fs::write(&path, capstan_api::schema::render(schema)).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("wrote {} schemas to {}", files.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
