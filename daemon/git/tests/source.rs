//! The Git source against real repositories: commits made with the `git` CLI in a working
//! repository, and pushes into a bare repository that the source tracks by path (notify) or by
//! file:// URL (polling and triggers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capstan_git::desired::{AppliedSet, plan, plan_delta};
use capstan_git::repo::{GitRepo, Location, RepoError};
use capstan_git::source::{CommitUpdate, GitSource, SourceConfig, SourceEvent};
use tokio::sync::mpsc::Receiver;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: NAME\ndata:\n  v: \"1\"\n";

fn cm(name: &str) -> String {
    CM.replace("NAME", name)
}

/// A working repository (`work`) that pushes to a bare one (`bare`).
struct Repos {
    _dir: tempfile::TempDir,
    work: PathBuf,
    bare: PathBuf,
    data: PathBuf,
}

impl Repos {
    fn new() -> Repos {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let bare = dir.path().join("bare.git");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        git(dir.path(), &["init", "-q", "--bare", bare.to_str().unwrap()]);
        git(&work, &["init", "-q"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Repos {
            _dir: dir,
            work,
            bare,
            data,
        }
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, path: &str) {
        git(&self.work, &["rm", "-q", path]);
    }

    /// Commits everything and pushes; returns the commit id.
    fn commit_push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn config(&self, location: Location) -> SourceConfig {
        let mut c = SourceConfig::new(location, self.data.clone());
        c.poll_interval = Duration::from_secs(600); // tests wake the source by notify or trigger
        c.max_backoff = Duration::from_millis(200);
        c
    }
}

async fn next_commit(rx: &mut Receiver<SourceEvent>) -> CommitUpdate {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the source reports within 20 s")
    {
        Some(SourceEvent::Commit(c)) => c,
        Some(SourceEvent::Failed(e)) => panic!("unexpected failure: {e}"),
        None => panic!("source stopped"),
    }
}

async fn next_failure(rx: &mut Receiver<SourceEvent>) -> String {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the source reports within 20 s")
    {
        Some(SourceEvent::Failed(e)) => e,
        Some(SourceEvent::Commit(c)) => panic!("unexpected commit {}", c.loaded.commit),
        None => panic!("source stopped"),
    }
}

fn names(update: &CommitUpdate) -> Vec<String> {
    update.loaded.snapshot.desired().objects.keys().map(|k| k.name.clone()).collect()
}

#[tokio::test]
async fn a_push_to_a_local_bare_repository_is_noticed_without_polling() {
    let r = Repos::new();
    r.write("a.yaml", &cm("a"));
    let c1 = r.commit_push("first");
    let (_source, mut rx) = GitSource::spawn(r.config(Location::Local(r.bare.clone())));
    let u = next_commit(&mut rx).await;
    assert_eq!(u.loaded.commit.to_string(), c1);
    assert_eq!(u.branch, "main");
    assert_eq!(names(&u), ["a"]);

    // The poll interval is ten minutes: only the file-system watch can make this arrive.
    r.write("b.yaml", &cm("b"));
    let c2 = r.commit_push("second");
    let u = next_commit(&mut rx).await;
    assert_eq!(u.loaded.commit.to_string(), c2);
    assert_eq!(u.previous.map(|p| p.to_string()), Some(c1));
    assert!(!u.force_pushed);
    assert_eq!(names(&u), ["a", "b"]);
    assert_eq!(u.loaded.files_read, 1, "only the changed file is re-read");
}

#[tokio::test]
async fn commits_in_a_local_working_repository_are_noticed() {
    let r = Repos::new();
    r.write("apps/a.yaml", &cm("a"));
    git(&r.work, &["add", "-A"]);
    git(&r.work, &["commit", "-q", "-m", "one"]);
    let (_source, mut rx) = GitSource::spawn(r.config(Location::Local(r.work.clone())));
    assert_eq!(names(&next_commit(&mut rx).await), ["a"]);
    r.write("apps/a.yaml", &cm("a").replace("\"1\"", "\"2\""));
    git(&r.work, &["commit", "-q", "-am", "two"]);
    let u = next_commit(&mut rx).await;
    assert_eq!(u.loaded.files_read, 1);
    let desired = u.loaded.snapshot.desired();
    let obj = &desired.objects.values().next().unwrap().object;
    assert_eq!(obj["data"]["v"], "2");
}

#[tokio::test]
async fn a_file_url_remote_is_fetched_on_trigger() {
    let r = Repos::new();
    r.write("a.yaml", &cm("a"));
    r.commit_push("first");
    let url = format!("file://{}", r.bare.display());
    let (source, mut rx) = GitSource::spawn(r.config(Location::Remote(url)));
    assert_eq!(names(&next_commit(&mut rx).await), ["a"]);
    r.write("b.yaml", &cm("b"));
    let c2 = r.commit_push("second");
    source.trigger();
    let u = next_commit(&mut rx).await;
    assert_eq!(u.loaded.commit.to_string(), c2);
    assert_eq!(u.loaded.files_read, 1);
}

#[tokio::test]
async fn a_remote_is_polled() {
    let r = Repos::new();
    r.write("a.yaml", &cm("a"));
    r.commit_push("first");
    let mut config = r.config(Location::Remote(format!("file://{}", r.bare.display())));
    config.poll_interval = Duration::from_millis(100);
    let (_source, mut rx) = GitSource::spawn(config);
    next_commit(&mut rx).await;
    r.write("b.yaml", &cm("b"));
    let c2 = r.commit_push("second");
    assert_eq!(next_commit(&mut rx).await.loaded.commit.to_string(), c2);
}

#[tokio::test]
async fn a_force_push_is_read_in_full_and_reported() {
    let r = Repos::new();
    r.write("a.yaml", &cm("a"));
    r.commit_push("first");
    r.write("b.yaml", &cm("b"));
    r.commit_push("second");
    let (source, mut rx) = GitSource::spawn(r.config(Location::Remote(format!("file://{}", r.bare.display()))));
    assert_eq!(names(&next_commit(&mut rx).await), ["a", "b"]);
    git(&r.work, &["reset", "-q", "--hard", "HEAD~1"]);
    r.write("c.yaml", &cm("c"));
    git(&r.work, &["add", "-A"]);
    git(&r.work, &["commit", "-q", "-m", "rewritten"]);
    git(&r.work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    source.trigger();
    let u = next_commit(&mut rx).await;
    assert!(u.force_pushed);
    assert_eq!(names(&u), ["a", "c"]);
}

#[tokio::test]
async fn an_unreachable_remote_and_a_deleted_branch_keep_the_last_state() {
    let r = Repos::new();
    let url = format!("file://{}", r._dir.path().join("missing.git").display());
    let (_source, mut rx) = GitSource::spawn(r.config(Location::Remote(url.clone())));
    let e = next_failure(&mut rx).await;
    assert!(e.contains("missing.git"), "{e}");

    r.write("a.yaml", &cm("a"));
    r.commit_push("first");
    let (source, mut rx) = GitSource::spawn(r.config(Location::Remote(format!("file://{}", r.bare.display()))));
    next_commit(&mut rx).await;
    git(&r.work, &["push", "-q", "origin", "HEAD:other"]);
    git(&r.bare, &["config", "receive.denyDeleteCurrent", "ignore"]);
    git(&r.work, &["push", "-q", "origin", "--delete", "main"]);
    source.trigger();
    let e = next_failure(&mut rx).await;
    assert!(e.contains("branch \"main\" does not exist"), "{e}");
    // Nothing else is reported: the last good commit stays in force.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err());
}

#[test]
fn an_empty_repository_is_reported_clearly() {
    let r = Repos::new();
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "", &r.data).unwrap();
    match repo.tip() {
        Err(RepoError::Empty { location }) => assert!(location.ends_with("bare.git")),
        other => panic!("expected Empty, got {other:?}"),
    }
}

#[test]
fn bad_files_quarantine_deleted_files_prune_and_parse_errors_never_prune() {
    let r = Repos::new();
    r.write("apps/web.yaml", &format!("{}---\n{}", cm("web"), cm("web-extra")));
    r.write("apps/api.yaml", &cm("api"));
    r.write("apps/db.yaml", &cm("db"));
    let c1 = r.commit_push("base");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    assert_eq!(l1.commit.to_string(), c1);
    let p1 = plan(&AppliedSet::new(), &l1.snapshot.desired(), &c1, true);
    assert_eq!(p1.create.len(), 4);

    // One bad object, one file that no longer parses, one deleted file.
    r.write(
        "apps/web.yaml",
        &format!("{}---\n{}", cm("web").replace("v: \"1\"", "v: [oops]"), cm("web-extra")),
    );
    r.write("apps/api.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: api\n");
    r.remove("apps/db.yaml");
    let c2 = r.commit_push("mixed");
    let l2 = repo.load_since(&l1, repo.tip().unwrap()).unwrap();
    assert_eq!(l2.files_read, 2);
    let d2 = l2.snapshot.desired();
    let p2 = plan_delta(&p1.next, &d2, l2.snapshot.delta().unwrap(), &c2, true);
    let full = plan(&p1.next, &d2, &c2, true);
    assert_eq!(
        (&p2.create, &p2.update, &p2.prune, &p2.held, &p2.next),
        (&full.create, &full.update, &full.prune, &full.held, &full.next)
    );
    let keys = |v: &[capstan_api::ObjectKey]| v.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&p2.prune), ["db"], "only the deleted file prunes");
    assert_eq!(keys(&p2.held), ["api"], "the unparsable file's object is held");
    assert_eq!(p2.quarantined.len(), 1);
    assert_eq!(p2.quarantined[0].object.name, "web");
    assert!(p2.quarantined[0].kept);
    assert!(p2.update.is_empty() && p2.create.is_empty());
    let lines: Vec<String> = d2.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "apps/api.yaml:3:11: unclosed bracket '{'");
    assert_eq!(
        lines[1],
        "apps/web.yaml:6:6: data.v: expected a string, got a list [configmap/web -n default]"
    );
    // The kept version is the one from the first commit.
    let web = p2.next.iter().find(|(k, _)| k.name == "web").unwrap().1.to_object();
    assert_eq!(web["data"]["v"], "1");
    assert_eq!(web["metadata"]["annotations"]["capstan.dev/commit"], c1.as_str());
}

#[test]
fn sub_paths_and_capstanignore() {
    let r = Repos::new();
    r.write("deploy/a.yaml", &cm("a"));
    r.write("deploy/drafts/b.yaml", &cm("b"));
    r.write("other/c.yaml", &cm("c"));
    r.write("deploy/.capstanignore", "drafts/\n");
    r.commit_push("one");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "deploy", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    let names = |l: &capstan_git::repo::LoadedCommit| l.snapshot.desired().objects.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&l1), ["a"]);
    // Changing the ignore file re-reads the tree with the new rules.
    r.write("deploy/.capstanignore", "a.yaml\n");
    r.commit_push("two");
    let l2 = repo.load_since(&l1, repo.tip().unwrap()).unwrap();
    assert_eq!(names(&l2), ["b"]);
    assert_eq!(
        l2.snapshot.file("deploy/drafts/b.yaml").unwrap().manifests[0].object["metadata"]["annotations"]["capstan.dev/source"],
        "deploy/drafts/b.yaml"
    );
}
