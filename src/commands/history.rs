//! `capstan history`: the tracked branch's commits with what Capstan did with each, read from the
//! notes it writes (`refs/notes/capstan`) — straight from Git, so it works on any clone that
//! fetched the notes.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use capstan_api::text::printable;
use capstan_git::notes;
use serde_json::json;

use crate::output::{Format, outln, print_structured};

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

pub fn run(repo: &Path, branch: Option<&str>, limit: usize, format: Format) -> anyhow::Result<ExitCode> {
    let git = git2::Repository::discover(repo).with_context(|| format!("{} is not in a git repository", repo.display()))?;
    let tip = match branch {
        Some(b) => git
            .revparse_single(b)
            .with_context(|| format!("no revision {b:?}"))?
            .peel_to_commit()?,
        None => git.head().context("the repository has no HEAD")?.peel_to_commit()?,
    };
    let mut walk = git.revwalk()?;
    walk.push(tip.id())?;
    walk.simplify_first_parent()?;
    let mut rows = Vec::new();
    for oid in walk.take(limit) {
        let commit = git.find_commit(oid?)?;
        let note = notes::read(&git, commit.id());
        let subject = commit.summary().ok().flatten().unwrap_or_default().to_owned();
        rows.push((commit.id().to_string(), subject, note));
    }
    if format != Format::Text {
        let rows: Vec<_> = rows
            .iter()
            .map(|(commit, subject, note)| json!({"commit": commit, "subject": subject, "note": note}))
            .collect();
        print_structured(format, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["COMMIT", "APPLIED", "OUTCOME", "CHANGED", "QUARANTINED", "SUBJECT"]);
    for (commit, subject, note) in &rows {
        let (applied, outcome, changed, quarantined) = match note {
            None => ("-".to_owned(), "not applied".to_owned(), "-".to_owned(), "-".to_owned()),
            Some(n) => {
                let failed: Vec<String> = n.failed_rollouts().iter().map(|(d, why)| format!("{d}: {why}")).collect();
                let mut outcome = n.outcome.as_str().to_owned();
                if !failed.is_empty() {
                    outcome = format!("{outcome} ({})", failed.join("; "));
                }
                let o = &n.objects;
                (
                    n.applied_at.clone(),
                    outcome,
                    format!("+{} ~{} -{}", o.created, o.updated, o.pruned),
                    n.quarantined.len().to_string(),
                )
            }
        };
        table.add_row([
            short(commit).to_owned(),
            applied,
            printable(&outcome).into_owned(),
            changed,
            quarantined,
            printable(subject).into_owned(),
        ]);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}
