//! The refs Capstan owns in a tracked repository, and the status commit's trailer: one home for
//! their names, read by the daemon that writes them and by `capstan status` and `history`.

/// The notes on applied commits (see [`crate::notes`]).
pub const NOTES: &str = "refs/notes/capstan";
/// The status branch: the observed status of every object, one commit per change.
pub const STATUS_BRANCH: &str = "refs/heads/capstan/status";
/// A ref of our own in a remote's mirror, for pushing a revert.
pub const REVERT: &str = "refs/capstan/revert";

/// The notes and the status branch as push and fetch refspecs; Capstan owns them, so they are
/// forced.
pub const REFSPECS: [&str; 2] = [
    "+refs/notes/capstan:refs/notes/capstan",
    "+refs/heads/capstan/status:refs/heads/capstan/status",
];

/// The trailer of a status commit that names the desired (applied) commit.
const DESIRED_TRAILER: &str = "Capstan-Desired-Commit: ";

/// Whether a file of a `.git` directory holds one of our write-back refs (their changes are
/// not news to the Git source).
pub fn is_ours(path: &str) -> bool {
    path.contains("/refs/notes/capstan") || path.contains("/refs/heads/capstan/")
}

/// The message of the status commit for `desired`.
pub fn status_message(desired: &str) -> String {
    let short = &desired[..desired.len().min(12)];
    format!("Status of {short}\n\n{DESIRED_TRAILER}{desired}\n")
}

/// The desired commit a status commit's message names.
pub fn desired_commit(message: &str) -> Option<&str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(DESIRED_TRAILER))
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_message_names_its_commit() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let m = status_message(c);
        assert!(m.starts_with("Status of 0123456789ab\n"));
        assert_eq!(desired_commit(&m), Some(c));
        assert_eq!(desired_commit("Status of x\n"), None);
        assert!(is_ours("/r/.git/refs/heads/capstan/status"));
        assert!(!is_ours("/r/.git/refs/heads/main"));
    }
}
