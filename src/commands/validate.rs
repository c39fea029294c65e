//! `capstan validate PATH`: every problem in a directory of manifests (or one file), printed as
//! `file:line:col: message`, with a summary; exit status 1 if there is any.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use capstan_manifest::desired::Snapshot;
use capstan_manifest::files::{read_dir, read_file};
use serde::Serialize;

use crate::output::{Format, outln, print_structured};

#[derive(Serialize)]
struct Outcome<'a> {
    files: usize,
    objects: usize,
    problems: &'a [capstan_manifest::problem::Problem],
}

pub fn run(path: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let files = if meta.is_dir() { read_dir(path)? } else { vec![read_file(path)] };
    let file_count = files.len();
    let snapshot = Snapshot::load(files);
    let desired = snapshot.desired();
    let outcome = Outcome {
        files: file_count,
        objects: desired.objects.len(),
        problems: &desired.problems,
    };
    if format == Format::Text {
        for p in &desired.problems {
            outln!("{p}");
        }
        if desired.problems.is_empty() {
            outln!("ok: {} objects in {} files", outcome.objects, outcome.files);
        } else {
            let bad_files = desired
                .problems
                .iter()
                .map(|p| p.file.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            outln!(
                "{} problem{} in {} file{} ({} objects valid, {} files checked)",
                desired.problems.len(),
                plural(desired.problems.len()),
                bad_files,
                plural(bad_files),
                outcome.objects,
                outcome.files
            );
        }
    } else {
        print_structured(format, &outcome)?;
    }
    Ok(if desired.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
