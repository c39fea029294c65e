//! `capstan plan BASE..HEAD`: what merging HEAD would do to a cluster running BASE — objects
//! created, updated (field by field), pruned, quarantined — for review on a pull request. Exit
//! status 1 if HEAD has problems.

use capstan_api::text::printable;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use capstan_git::repo::{GitRepo, Location};
use capstan_manifest::desired::{AppliedSet, plan};
use capstan_manifest::report::{Entry, Report};

use crate::commands::validate::plural;
use crate::output::{Format, outln, print_structured};

pub fn run(
    repo_path: &Path,
    subpath: &str,
    range: &str,
    kustomize: Option<std::path::PathBuf>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let Some((base, head)) = range.split_once("..") else {
        bail!("expected a range BASE..HEAD, got {range:?}");
    };
    let head = if head.is_empty() { "HEAD" } else { head };
    let data_dir = std::env::temp_dir();
    let mut repo = GitRepo::open(Location::Local(repo_path.to_path_buf()), Some("HEAD"), subpath, &data_dir)
        .with_context(|| format!("opening {}", repo_path.display()))?;
    repo.use_kustomize(kustomize);
    let resolve = |rev: &str| -> anyhow::Result<git2::Oid> {
        let obj = repo
            .repository()
            .revparse_single(rev)
            .with_context(|| format!("unknown revision {rev:?}"))?;
        Ok(obj.peel_to_commit().with_context(|| format!("{rev:?} is not a commit"))?.id())
    };
    let (base_id, head_id) = (resolve(base)?, resolve(head)?);
    let base_loaded = repo.load(base_id)?;
    let head_loaded = repo.load_since(&base_loaded, head_id)?;
    let applied = plan(&AppliedSet::new(), &base_loaded.snapshot.desired(), &base_id.to_string(), true).next;
    let head_plan = plan(&applied, &head_loaded.snapshot.desired(), &head_id.to_string(), true);
    let report = Report::new(&base_id.to_string(), &head_id.to_string(), &applied, &head_plan);
    if format != Format::Text {
        print_structured(format, &report)?;
    } else {
        print_text(&report, base, head)?;
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

fn print_text(report: &Report, base: &str, head: &str) -> anyhow::Result<()> {
    outln!(
        "Plan {}..{} ({}..{})",
        printable(base),
        printable(head),
        short(&report.base),
        short(&report.head)
    );
    outln!();
    for e in &report.entries {
        match e {
            Entry::Create { object, file } => outln!("  + create  {object}  ({})", printable(file)),
            Entry::Update { object, file, changes } => {
                outln!("  ~ update  {object}  ({})", printable(file));
                for c in changes {
                    outln!("        {}", printable(&c.to_string()));
                }
            }
            Entry::Prune { object, file } => outln!("  - prune   {object}  (was in {})", printable(file)),
            Entry::Quarantine { object, kept, problems } => {
                let what = if *kept {
                    "keeps running its last good version"
                } else {
                    "will not be created"
                };
                outln!("  ! broken  {object}: {what}");
                for p in problems {
                    outln!("        {p}");
                }
            }
            Entry::Hold { object, file } => {
                outln!("  = hold    {object}  ({} cannot be read; not pruned)", printable(file))
            }
        }
    }
    if report.entries.is_empty() {
        outln!("  no changes");
    }
    let others: Vec<_> = report.problems.iter().filter(|p| p.object.is_none()).collect();
    if !others.is_empty() {
        outln!();
        outln!("Problems:");
        for p in others {
            outln!("  {p}");
        }
    }
    if !report.warnings.is_empty() {
        outln!();
        for w in &report.warnings {
            outln!("warning: {w}");
        }
    }
    outln!();
    let n = |f: fn(&Entry) -> bool| report.count(f);
    outln!(
        "{} to create, {} to update, {} to prune, {} broken, {} unchanged; {} problem{}",
        n(|e| matches!(e, Entry::Create { .. })),
        n(|e| matches!(e, Entry::Update { .. })),
        n(|e| matches!(e, Entry::Prune { .. })),
        n(|e| matches!(e, Entry::Quarantine { .. })),
        report.unchanged,
        report.problems.len(),
        plural(report.problems.len())
    );
    Ok(())
}
