//! The note Capstan writes on each applied commit (`refs/notes/capstan`), as a typed value: when
//! it was applied, what changed, what was quarantined, how its rollouts ended, and any revert.
//! JSON in Git, so that scripts can read it too; read and written here with git2 (append-only
//! once the note has an outcome).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::refs;

/// How an applied commit ended up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every object applied and every rollout done.
    Complete,
    /// Rollouts still under way.
    #[default]
    Progressing,
    /// A rollout missed its progress deadline.
    Failed,
    /// Objects of the commit did not apply (the rest did).
    Quarantined,
    /// A later commit was applied before this one's rollouts could be told apart.
    Superseded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Progressing => "progressing",
            Outcome::Failed => "failed",
            Outcome::Quarantined => "quarantined",
            Outcome::Superseded => "superseded",
        }
    }
}

/// How many objects the commit created, updated, pruned and left as they were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub created: usize,
    pub updated: usize,
    pub pruned: usize,
    pub unchanged: usize,
}

/// An object of the commit that did not apply; `kept_running`: its previous version still runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedObject {
    pub object: Value,
    #[serde(default)]
    pub kept_running: bool,
}

/// A rollout the commit started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// `namespace/name`.
    pub deployment: String,
    /// `complete`, `progressing` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What came of reverting a failed commit (`--revert-failed-rollouts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revert {
    /// The revert commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_by: Option<String>,
    /// Why no revert was made (the branch moved on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_skipped: Option<String>,
    /// Why the revert failed (tried again at the next interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_error: Option<String>,
}

impl Revert {
    pub fn is_empty(&self) -> bool {
        *self == Revert::default()
    }
}

/// The note on one applied commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub applied_at: String,
    #[serde(default)]
    pub objects: Counts,
    #[serde(default)]
    pub quarantined: Vec<QuarantinedObject>,
    /// The problems `validate` reports, as it reports them (file, line, message, object).
    #[serde(default)]
    pub problems: Vec<Value>,
    /// What the commit applied but not quite as written, in the same form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Value>,
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    #[serde(default)]
    pub outcome: Outcome,
    /// Why prunes were held back (the mass-prune guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_held: Option<String>,
    /// Objects gone from the tree but kept (pruning off, an unreadable file, or data a claim
    /// or volume holds), as object keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(flatten)]
    pub revert: Revert,
}

impl Note {
    /// The note as written into Git.
    pub fn text(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The failed rollouts: (deployment, why).
    pub fn failed_rollouts(&self) -> Vec<(String, String)> {
        self.rollouts
            .iter()
            .filter(|r| r.state == "failed")
            .map(|r| {
                let why = r.message.clone().unwrap_or_else(|| "missed its progress deadline".into());
                (r.deployment.clone(), why)
            })
            .collect()
    }
}

/// The note Capstan wrote on `commit`, if any (and if it reads as one).
pub fn read(repo: &git2::Repository, commit: git2::Oid) -> Option<Note> {
    let note = repo.find_note(Some(refs::NOTES), commit).ok()?;
    serde_json::from_str(note.message().ok()?).ok()
}

/// Writes `note` on `commit` unless it is there already. Append-only: once a note has its
/// outcome, the audit trail keeps it; the note may only gain facts about that same application
/// (a revert tried again). A commit applied again later, after a restart, keeps its first note.
pub fn write(repo: &git2::Repository, commit: &str, note: &Note) -> Result<bool, git2::Error> {
    let oid = git2::Oid::from_str(commit)?;
    let text = note.text();
    if let Ok(existing) = repo.find_note(Some(refs::NOTES), oid) {
        let message = existing.message().unwrap_or_default();
        let old: Option<Note> = serde_json::from_str(message).ok();
        let settled = old.as_ref().is_some_and(|o| o.outcome != Outcome::Progressing);
        let same_application = old
            .as_ref()
            .is_some_and(|o| o.outcome == note.outcome && o.applied_at == note.applied_at);
        if message == text || (settled && !same_application) {
            return Ok(false);
        }
    }
    let sig = crate::repo::capstan_signature()?;
    repo.note(&sig, &sig, Some(refs::NOTES), oid, &text, true)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn repo_with_commit() -> (tempfile::TempDir, git2::Repository, String) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let sig = crate::repo::capstan_signature().unwrap();
        let tree = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let oid = repo.commit(Some("HEAD"), &sig, &sig, "first", &tree, &[]).unwrap();
        drop(tree);
        (dir, repo, oid.to_string())
    }

    fn note(outcome: Outcome, at: &str) -> Note {
        Note {
            outcome,
            applied_at: at.into(),
            ..Note::default()
        }
    }

    #[test]
    fn notes_are_append_only_once_they_have_an_outcome() {
        let (_dir, repo, commit) = repo_with_commit();
        let oid = git2::Oid::from_str(&commit).unwrap();
        assert!(write(&repo, &commit, &note(Outcome::Progressing, "t1")).unwrap());
        assert!(write(&repo, &commit, &note(Outcome::Complete, "t1")).unwrap());
        // Applied again later (a restart, a branch gone and back): the first note stays.
        assert!(!write(&repo, &commit, &note(Outcome::Progressing, "t2")).unwrap());
        assert!(!write(&repo, &commit, &note(Outcome::Failed, "t1")).unwrap());
        assert_eq!(read(&repo, oid), Some(note(Outcome::Complete, "t1")));
        // Facts about the same application may be added (a revert that was tried again).
        let mut reverted = note(Outcome::Complete, "t1");
        reverted.revert.reverted_by = Some("x".into());
        assert!(write(&repo, &commit, &reverted).unwrap());
        assert_eq!(read(&repo, oid).unwrap().revert.reverted_by.as_deref(), Some("x"));
    }

    #[test]
    fn notes_read_as_earlier_versions_wrote_them() {
        let text = r#"{"commit": "abc", "branch": "main", "appliedAt": "2026-11-01T10:00:00Z",
            "objects": {"created": 2, "updated": 1, "pruned": 0, "unchanged": 5},
            "quarantined": [{"object": {"kind": "Deployment", "name": "web"}, "keptRunning": true}],
            "problems": [{"file": "web.yaml", "line": 3, "message": "bad"}],
            "rollouts": [{"deployment": "default/web", "state": "failed", "message": "timed out"}],
            "outcome": "failed", "revertedBy": "def"}"#;
        let n: Note = serde_json::from_str(text).unwrap();
        assert_eq!(n.outcome, Outcome::Failed);
        assert_eq!(n.objects.created, 2);
        assert!(n.quarantined[0].kept_running);
        assert_eq!(n.failed_rollouts(), [("default/web".to_owned(), "timed out".to_owned())]);
        assert_eq!(n.revert.reverted_by.as_deref(), Some("def"));
        let again: Note = serde_json::from_str(&n.text()).unwrap();
        assert_eq!(again, n);
    }
}
