//! `capstan history`: the tracked branch's commits with what Capstan did with each, read from the
//! notes it writes (`refs/notes/capstan`) — straight from Git, so it works on any clone that
//! fetched the notes.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use capstan_api::text::printable;
use serde_json::{Value, json};

use crate::output::{Format, outln, print_structured};

/// The note Capstan wrote on `commit`, if any.
pub fn read_note(repo: &git2::Repository, commit: git2::Oid) -> Option<Value> {
    let note = repo.find_note(Some(capstan_daemon::writeback::NOTES_REF), commit).ok()?;
    serde_json::from_str(note.message().ok()?).ok()
}

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
        let note = read_note(&git, commit.id());
        rows.push(json!({
            "commit": commit.id().to_string(),
            "subject": commit.summary().unwrap_or_default(),
            "note": note,
        }));
    }
    if format != Format::Text {
        print_structured(format, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["COMMIT", "APPLIED", "OUTCOME", "CHANGED", "QUARANTINED", "SUBJECT"]);
    for r in &rows {
        let n = &r["note"];
        let (applied, outcome, changed, quarantined) = if n.is_null() {
            ("-".to_owned(), "not applied".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            let o = &n["objects"];
            let failed: Vec<String> = n["rollouts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["state"] == "failed")
                .map(|r| {
                    format!(
                        "{}: {}",
                        r["deployment"].as_str().unwrap_or_default(),
                        r["message"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            let mut outcome = n["outcome"].as_str().unwrap_or_default().to_owned();
            if !failed.is_empty() {
                outcome = format!("{outcome} ({})", failed.join("; "));
            }
            (
                n["appliedAt"].as_str().unwrap_or_default().to_owned(),
                outcome,
                format!("+{} ~{} -{}", o["created"], o["updated"], o["pruned"]),
                n["quarantined"].as_array().map_or(0, Vec::len).to_string(),
            )
        };
        table.add_row([
            short(r["commit"].as_str().unwrap_or_default()).to_owned(),
            applied,
            printable(&outcome).into_owned(),
            changed,
            quarantined,
            printable(r["subject"].as_str().unwrap_or_default()).into_owned(),
        ]);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}
