//! Opt-in rollback by Git (`--revert-failed-rollouts`): when the rollout of the tracked
//! branch's tip misses its progress deadline, Capstan commits `git revert` of that commit on the
//! branch, as a person would, so that the cluster returns to the last good state and Git says
//! why. Only the tip is reverted: once someone has committed after it, the decision is theirs.
//!
//! The message is pure ([`message`]); [`revert_tip`] is the git2 edge.

use std::path::Path;

use git2::{BranchType, Oid, Repository};

use crate::refs::REVERT as REVERT_REF;

/// The revert commit's message: git's own first lines, then why.
pub fn message(summary: &str, commit: &str, failures: &[(String, String)]) -> String {
    let mut out = format!("Revert \"{summary}\"\n\nThis reverts commit {commit}.\n\n");
    out.push_str("Capstan reverted it: its rollout missed the progress deadline.\n");
    for (deployment, why) in failures {
        out.push_str(&format!("- {deployment}: {why}\n"));
    }
    out.push_str(&format!("\nCapstan-Reverts: {commit}\n"));
    out
}

/// What came of a revert.
#[derive(Debug, PartialEq, Eq)]
pub enum Reverted {
    /// The revert commit, on the branch (and pushed, for a remote).
    Committed(Oid),
    /// The branch has moved past the commit: nothing done.
    NotTip,
}

/// Reverts `commit` on `branch` of the repository at `path` if it is still the branch's tip.
/// `push_to`: the remote the branch comes from (`path` is then its mirror): the branch is
/// fetched first and the revert pushed (not forced: a push made meanwhile wins).
pub fn revert_tip(
    path: &Path,
    branch: &str,
    commit: &str,
    failures: &[(String, String)],
    push_to: Option<&str>,
) -> Result<Reverted, git2::Error> {
    let repo = Repository::open(path)?;
    let refname = format!("refs/heads/{branch}");
    if let Some(url) = push_to {
        crate::repo::fetch_refs(&repo, url, &[&format!("+{refname}:{refname}")])?;
    }
    let tip = repo.find_branch(branch, BranchType::Local)?.get().peel_to_commit()?;
    let failed = Oid::from_str(commit)?;
    if tip.id() != failed {
        return Ok(Reverted::NotTip);
    }
    let mut index = repo.revert_commit(&tip, &tip, 0, None)?;
    if index.has_conflicts() {
        return Err(git2::Error::from_str("the revert conflicts"));
    }
    let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
    let sig = crate::repo::capstan_signature()?;
    let text = message(tip.summary().ok().flatten().unwrap_or_default(), commit, failures);
    let new = repo.commit(None, &sig, &sig, &text, &tree, &[&tip])?;
    // A working tree on the branch follows first (while HEAD still names the failed commit, so
    // that git can tell unmodified files): a file someone changed there stops the revert.
    let on_branch = repo.head().ok().and_then(|h| h.name().ok().map(str::to_owned)) == Some(refname.clone());
    if push_to.is_none() && !repo.is_bare() && on_branch {
        repo.checkout_tree(tree.as_object(), Some(git2::build::CheckoutBuilder::new().safe()))?;
    }
    match push_to {
        // The mirror's branch is the source's to move (at its next fetch): push from a ref of
        // our own, so that a refused push leaves nothing behind.
        Some(url) => {
            let mut ours = repo.reference(REVERT_REF, new, true, "capstan: revert a failed rollout")?;
            let pushed = crate::repo::push(&repo, url, &[&format!("{REVERT_REF}:{refname}")]);
            ours.delete()?;
            pushed?;
        }
        // Only if the branch is still where it was read.
        None => {
            repo.reference_matching(&refname, new, true, failed, "capstan: revert a failed rollout")?;
        }
    }
    Ok(Reverted::Committed(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_file(repo: &Repository, file: &str, text: &str, message: &str) -> Oid {
        let dir = repo.workdir().unwrap();
        std::fs::write(dir.join(file), text).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new(file)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        let parents: Vec<git2::Commit<'_>> = repo.head().ok().and_then(|h| h.peel_to_commit().ok()).into_iter().collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap()
    }

    #[test]
    fn the_tip_is_reverted_with_the_reason_and_the_working_tree_follows() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_opts(dir.path(), git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
        commit_file(&repo, "web.yaml", "image: web:1\n", "web 1");
        let bad = commit_file(&repo, "web.yaml", "image: web:2\n", "web 2").to_string();
        let failures = [("shop/web".to_owned(), "ReplicaSet \"web-x\" has timed out progressing.".to_owned())];
        let Reverted::Committed(new) = revert_tip(dir.path(), "main", &bad, &failures, None).unwrap() else {
            panic!("not reverted");
        };
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        assert_eq!(head.id(), new);
        assert_eq!(head.parent_id(0).unwrap().to_string(), bad);
        let text = head.message().unwrap().to_owned();
        assert!(text.starts_with("Revert \"web 2\"\n\nThis reverts commit "), "{text}");
        assert!(text.contains("shop/web: ReplicaSet \"web-x\" has timed out progressing."), "{text}");
        assert_eq!(std::fs::read_to_string(dir.path().join("web.yaml")).unwrap(), "image: web:1\n");
        // Not the tip any more: nothing more is done.
        assert_eq!(revert_tip(dir.path(), "main", &bad, &failures, None).unwrap(), Reverted::NotTip);
    }
}
