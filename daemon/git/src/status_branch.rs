//! The status branch (`capstan/status`): one JSON file per object with its observed status,
//! committed when something changed, each commit naming the applied commit it reflects. Written
//! by the daemon, read by `capstan status`, both with git2.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::refs;

/// What the status branch's tip says.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The applied commit the statuses belong to.
    pub desired: String,
    /// When the tip was committed (Unix seconds).
    pub written_at: i64,
    /// Every object's file, parsed.
    pub objects: Vec<Value>,
}

/// Commits `files` (path → text) on the status branch if they or the applied commit differ
/// from its tip.
pub fn write(repo: &git2::Repository, files: &BTreeMap<String, String>, desired: &str) -> Result<bool, git2::Error> {
    let empty = repo.find_tree(repo.treebuilder(None)?.write()?)?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, text) in files {
        update.upsert(path.as_str(), repo.blob(text.as_bytes())?, git2::FileMode::Blob);
    }
    let tree = repo.find_tree(update.create_updated(repo, &empty)?)?;
    let parent = repo.find_reference(refs::STATUS_BRANCH).ok().and_then(|r| r.peel_to_commit().ok());
    let message = refs::status_message(desired);
    // A new applied commit is a new status even when no object's status moved: `capstan
    // status` reads the applied commit from here.
    if parent
        .as_ref()
        .is_some_and(|p| p.tree_id() == tree.id() && p.message().ok() == Some(message.as_str()))
    {
        return Ok(false);
    }
    let sig = crate::repo::capstan_signature()?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some(refs::STATUS_BRANCH), &sig, &sig, &message, &tree, &parents)?;
    Ok(true)
}

/// The status branch's tip; None when the repository has no status branch.
pub fn read(repo: &git2::Repository) -> Result<Option<Status>, git2::Error> {
    let Ok(reference) = repo.find_reference(refs::STATUS_BRANCH) else {
        return Ok(None);
    };
    let commit = reference.peel_to_commit()?;
    let desired = refs::desired_commit(commit.message().unwrap_or_default())
        .unwrap_or_default()
        .to_owned();
    let mut objects = Vec::new();
    commit.tree()?.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob)
            && let Ok(blob) = repo.find_blob(entry.id())
            && let Ok(doc) = serde_json::from_slice::<Value>(blob.content())
        {
            objects.push(doc);
        }
        git2::TreeWalkResult::Ok
    })?;
    Ok(Some(Status {
        desired,
        written_at: commit.time().seconds(),
        objects,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_applied_commit_is_written_even_with_the_same_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        assert_eq!(read(&repo).unwrap(), None);
        let files = BTreeMap::from([("pods/default/web.json".to_owned(), "{\"kind\": \"Pod\"}".to_owned())]);
        let c1 = "1".repeat(40);
        let c2 = "2".repeat(40);
        assert!(write(&repo, &files, &c1).unwrap());
        assert!(!write(&repo, &files, &c1).unwrap());
        assert!(write(&repo, &files, &c2).unwrap());
        let status = read(&repo).unwrap().unwrap();
        assert_eq!(status.desired, c2);
        assert_eq!(status.objects, [serde_json::json!({"kind": "Pod"})]);
    }
}
