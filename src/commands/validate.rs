//! `capstan validate PATH`: every problem in a directory of manifests (or one file), printed as
//! `file:line:col: message`, with a summary; exit status 1 if there is any.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use capstan_manifest::desired::{FileChange, Snapshot};
use capstan_manifest::files::read_file;
use serde::Serialize;

use crate::output::{Format, outln, print_structured};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome<'a> {
    files: usize,
    objects: usize,
    kustomize_roots: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    kustomize: Option<String>,
    problems: &'a [capstan_manifest::problem::Problem],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [capstan_manifest::problem::Problem],
}

pub fn run(path: &Path, kustomize: Option<&Path>, format: Format) -> anyhow::Result<ExitCode> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let (files, built) = if meta.is_dir() {
        capstan_kustomize::dir::load(path, kustomize)?
    } else {
        (vec![read_file(path)], Default::default())
    };
    let file_count = files.iter().filter(|f| !matches!(f, FileChange::Loaded(_))).count();
    let snapshot = Snapshot::load(files);
    let desired = snapshot.desired();
    let outcome = Outcome {
        files: file_count,
        objects: desired.objects.len(),
        kustomize_roots: built.roots,
        kustomize: built.kustomize,
        problems: &desired.problems,
        warnings: &desired.warnings,
    };
    let roots = match (&outcome.kustomize, outcome.kustomize_roots) {
        (Some(by), n) => format!(", {n} kustomize root{} built with {by}", plural(n)),
        (None, _) => String::new(),
    };
    if format == Format::Text {
        for p in &desired.problems {
            outln!("{p}");
        }
        for w in &desired.warnings {
            outln!("warning: {w}");
        }
        if desired.problems.is_empty() {
            outln!("ok: {} objects in {} files{roots}", outcome.objects, outcome.files);
        } else {
            let bad_files = desired
                .problems
                .iter()
                .map(|p| p.file.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            outln!(
                "{} problem{} in {} file{} ({} objects valid, {} files checked{roots})",
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
