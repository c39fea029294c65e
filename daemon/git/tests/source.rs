//! The Git source against real repositories: commits made with the `git` CLI in a working
//! repository, and pushes into a bare repository that the source tracks by path (notify) or by
//! file:// URL (polling and triggers).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use capstan_git::repo::{GitRepo, Location, RepoError};
use capstan_git::source::{CommitUpdate, GitSource, SourceConfig, SourceEvent};
use capstan_manifest::desired::{AppliedSet, plan, plan_delta};
use tokio::sync::mpsc::Receiver;

use capstan_git::fixture::git;

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

/// Problems of one file, as printed.
fn file_problems(l: &capstan_git::repo::LoadedCommit, path: &str) -> Vec<String> {
    l.snapshot
        .file(path)
        .map_or_else(Vec::new, |f| f.problems.iter().map(|p| p.to_string()).collect())
}

#[test]
fn a_commit_read_by_its_changes_is_held_to_the_trees_byte_budget_as_a_full_read_is() {
    let r = Repos::new();
    // Three files of one size under a budget that holds two: the third is not read.
    let sized = |name: &str| format!("{}# {}\n", cm(name), "x".repeat(100));
    let budget = 2 * sized("a").len() + 10;
    r.write("a.yaml", &sized("a"));
    let c1 = r.commit_push("one file");
    let mut repo = GitRepo::open(Location::Local(r.bare.clone()), None, "", &r.data).unwrap();
    repo.limit_tree_bytes(budget);
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    assert_eq!(l1.commit.to_string(), c1);
    r.write("b.yaml", &sized("b"));
    r.write("c.yaml", &sized("c"));
    r.commit_push("two more, over the budget");
    let tip = repo.tip().unwrap();
    let by_changes = repo.load_since(&l1, tip).unwrap();
    let full = repo.load(tip).unwrap();
    for l in [&by_changes, &full] {
        assert!(l.over_budget);
        assert_eq!(file_problems(l, "a.yaml"), Vec::<String>::new());
        assert_eq!(file_problems(l, "b.yaml"), Vec::<String>::new());
        let c = file_problems(l, "c.yaml");
        assert!(
            c.len() == 1 && c[0].contains(&format!("the manifests of this tree exceed {budget} bytes in all")),
            "{c:?}"
        );
    }
    // One file goes: the one left unread fits again, and is read.
    r.remove("a.yaml");
    r.commit_push("room again");
    let l3 = repo.load_since(&by_changes, repo.tip().unwrap()).unwrap();
    assert!(!l3.over_budget);
    assert_eq!(file_problems(&l3, "c.yaml"), Vec::<String>::new());
    assert_eq!(l3.snapshot.desired().objects.len(), 2);
}

#[test]
fn symbolic_links_are_read_as_their_targets_inside_the_tree_and_nothing_else() {
    let r = Repos::new();
    // The target sits in a dot-directory, which is not read on its own (else the object would
    // be defined twice).
    r.write("deploy/.base/web.yaml", &cm("web"));
    r.write("deploy/plain.yaml", &cm("plain"));
    std::fs::write(r._dir.path().join("outside.yaml"), cm("outside")).unwrap();
    let link = |name: &str, target: &str| {
        let p = r.work.join(name);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).unwrap();
    };
    link("deploy/web-link.yaml", ".base/web.yaml");
    link("deploy/escape.yaml", "../../outside.yaml");
    link("deploy/absolute.yaml", "/etc/passwd");
    link("deploy/dangling.yaml", ".base/missing.yaml");
    r.commit_push("links");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "deploy", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    let web_link = l1.snapshot.file("deploy/web-link.yaml").unwrap();
    assert!(web_link.problems.is_empty());
    assert_eq!(web_link.manifests[0].key.name, "web");
    for (path, expect) in [
        ("deploy/escape.yaml", "leaves the tracked tree"),
        ("deploy/absolute.yaml", "leaves the tracked tree"),
        ("deploy/dangling.yaml", "dangles"),
    ] {
        let problems = file_problems(&l1, path);
        assert_eq!(problems.len(), 1, "{path}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!("{path}:1:1: symbolic link")) && problems[0].contains(expect),
            "{problems:?}"
        );
        assert!(!l1.snapshot.file(path).unwrap().intact);
    }
    // The directory reader (capstan validate) reads the same way.
    let from_dir = capstan_manifest::desired::Snapshot::load(capstan_manifest::files::read_dir(&r.work.join("deploy")).unwrap());
    let dir_problems: Vec<String> = from_dir.desired().problems.iter().map(|p| p.message.clone()).collect();
    let git_problems: Vec<String> = l1.snapshot.desired().problems.iter().map(|p| p.message.clone()).collect();
    assert_eq!(dir_problems.len(), 3, "{dir_problems:?}");
    assert!(
        dir_problems.iter().filter(|m| m.contains("leaves the tracked tree")).count() == 2,
        "{dir_problems:?}"
    );
    assert_eq!(git_problems.len(), 3);
    assert_eq!(from_dir.desired().objects.len(), l1.snapshot.desired().objects.len());

    // The target changes while the link stays: the incremental read sees the new content.
    r.write("deploy/.base/web.yaml", &cm("web").replace("v: \"1\"", "v: \"2\""));
    r.commit_push("target changes");
    let l2 = repo.load_since(&l1, repo.tip().unwrap()).unwrap();
    let web = &l2.snapshot.file("deploy/web-link.yaml").unwrap().manifests[0].object;
    assert_eq!(web["data"]["v"], "2");

    // A manifest replaced by a link to a file outside the tree: an error that keeps its objects.
    std::fs::remove_file(r.work.join("deploy/plain.yaml")).unwrap();
    link("deploy/plain.yaml", "../../outside.yaml");
    let c3 = r.commit_push("plain becomes a link");
    let l3 = repo.load_since(&l2, repo.tip().unwrap()).unwrap();
    let applied = plan(&AppliedSet::new(), &l2.snapshot.desired(), "c2", true).next;
    let p3 = plan_delta(&applied, &l3.snapshot.desired(), l3.snapshot.delta().unwrap(), &c3, true);
    assert!(p3.prune.is_empty(), "nothing is pruned: {:?}", p3.prune);
    assert!(p3.held.iter().any(|k| k.name == "plain"), "{:?}", p3.held);
    // Read in full (a restart), the same commit reads the same way.
    let full = repo.load(repo.tip().unwrap()).unwrap();
    assert_eq!(file_problems(&full, "deploy/plain.yaml"), file_problems(&l3, "deploy/plain.yaml"));

    // The link goes back to a file inside: read again.
    link("deploy/plain.yaml", ".base/other.yaml");
    r.write("deploy/.base/other.yaml", &cm("plain"));
    r.commit_push("link inside");
    let l4 = repo.load_since(&l3, repo.tip().unwrap()).unwrap();
    assert!(file_problems(&l4, "deploy/plain.yaml").is_empty());
}

#[test]
fn a_tracked_path_that_does_not_exist_is_an_error_not_an_empty_tree() {
    let r = Repos::new();
    r.write("deploy/a.yaml", &cm("a"));
    r.commit_push("one");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "deplyo", &r.data).unwrap();
    match repo.load(repo.tip().unwrap()) {
        Err(e @ RepoError::MissingPath { .. }) => assert!(e.to_string().contains("\"deplyo\" is not a directory"), "{e}"),
        other => panic!("expected MissingPath, got {:?}", other.map(|l| l.commit)),
    }
    // A later commit that removes the tracked directory is refused the same way.
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "deploy", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    r.remove("deploy/a.yaml");
    r.commit_push("the directory goes");
    assert!(matches!(
        repo.load_since(&l1, repo.tip().unwrap()),
        Err(RepoError::MissingPath { .. })
    ));
}

#[test]
fn devices_fifos_and_links_out_of_the_directory_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ok.yaml"), cm("ok")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", d.join("host.yaml")).unwrap();
    assert!(Command::new("mkfifo").arg(d.join("fifo.yaml")).status().unwrap().success());
    std::os::unix::fs::symlink("/etc/shadow", d.join(".capstanignore")).unwrap();
    match capstan_manifest::files::read_dir(d) {
        Err(e) => assert!(
            e.to_string()
                .contains(".capstanignore: symbolic link to \"/etc/shadow\" leaves the tracked tree"),
            "{e}"
        ),
        Ok(_) => panic!("an ignore file outside the tree is refused"),
    }
    std::fs::remove_file(d.join(".capstanignore")).unwrap();
    let files = capstan_manifest::files::read_dir(d).unwrap();
    let snapshot = capstan_manifest::desired::Snapshot::load(files);
    let problems: Vec<String> = snapshot.desired().problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("fifo.yaml:1:1: not a regular file"), "{problems:?}");
    assert!(
        problems[1].starts_with("host.yaml:1:1: symbolic link to \"/etc/hostname\" leaves"),
        "{problems:?}"
    );
    assert!(
        problems[2].starts_with("zero.yaml:1:1: symbolic link to \"/dev/zero\" leaves"),
        "{problems:?}"
    );
    assert_eq!(snapshot.desired().objects.len(), 1);
}

/// The names of the objects a loaded commit declares, sorted.
fn declared(l: &capstan_git::repo::LoadedCommit) -> Vec<String> {
    let desired = l.snapshot.desired();
    let mut names: Vec<String> = desired.objects.keys().map(|k| format!("{}/{}", k.namespace, k.name)).collect();
    names.sort();
    names
}

#[test]
fn kustomize_roots_are_rebuilt_only_when_what_they_read_changes() {
    let r = Repos::new();
    r.write("base/kustomization.yaml", "resources: [cm.yaml]\n");
    r.write("base/cm.yaml", &cm("app"));
    for env in ["dev", "qa", "prod"] {
        r.write(
            &format!("overlays/{env}/kustomization.yaml"),
            &format!("resources: [../../base]\nnamePrefix: {env}-\n"),
        );
    }
    r.write("plain/one.yaml", &cm("plain"));
    r.commit_push("three overlays of one base, and a plain file");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    assert_eq!(l1.roots_built, 3, "the base is not built by itself");
    assert_eq!(
        declared(&l1),
        ["default/dev-app", "default/plain", "default/prod-app", "default/qa-app"]
    );

    // The base changes: its three overlays are built again, nothing else.
    r.write("base/cm.yaml", &cm("app").replace("\"1\"", "\"2\""));
    r.commit_push("base changed");
    let l2 = repo.load_since(&l1, repo.tip().unwrap()).unwrap();
    assert_eq!(l2.roots_built, 3);
    let prod = &l2.snapshot.desired().objects;
    let prod = prod.iter().find(|(k, _)| k.name == "prod-app").unwrap().1;
    assert_eq!(prod.object["data"]["v"], "2");
    assert_eq!(prod.object["metadata"]["annotations"]["capstan.dev/source"], "base/cm.yaml");
    assert_eq!(
        prod.object["metadata"]["annotations"]["capstan.dev/kustomization"],
        "overlays/prod/kustomization.yaml"
    );

    // One overlay changes: only it is built.
    r.write("overlays/qa/kustomization.yaml", "resources: [../../base]\nnamePrefix: test-\n");
    r.commit_push("qa renamed");
    let l3 = repo.load_since(&l2, repo.tip().unwrap()).unwrap();
    assert_eq!(l3.roots_built, 1);
    assert_eq!(
        declared(&l3),
        ["default/dev-app", "default/plain", "default/prod-app", "default/test-app"]
    );

    // A kustomization added over plain files takes them over; removed, they are plain again.
    r.write("plain/kustomization.yaml", "resources: [one.yaml]\nnameSuffix: -kept\n");
    r.commit_push("plain is a root now");
    let l4 = repo.load_since(&l3, repo.tip().unwrap()).unwrap();
    assert_eq!(l4.roots_built, 1);
    assert_eq!(
        declared(&l4),
        ["default/dev-app", "default/plain-kept", "default/prod-app", "default/test-app"]
    );
    r.remove("plain/kustomization.yaml");
    r.commit_push("plain again");
    let l5 = repo.load_since(&l4, repo.tip().unwrap()).unwrap();
    assert_eq!(l5.roots_built, 0);
    assert_eq!(
        declared(&l5),
        ["default/dev-app", "default/plain", "default/prod-app", "default/test-app"]
    );

    // An overlay that names the other: the named one is a base from now on.
    r.write("overlays/dev/kustomization.yaml", "resources: [../prod]\nnameSuffix: -x\n");
    r.commit_push("dev on top of prod");
    let l6 = repo.load_since(&l5, repo.tip().unwrap()).unwrap();
    assert_eq!(declared(&l6), ["default/plain", "default/prod-app-x", "default/test-app"]);
    // Every step read by its changes equals a full read of the same commit.
    let full = repo.load(l6.commit).unwrap();
    assert_eq!(declared(&full), declared(&l6));
    assert!(full.snapshot.desired().problems.is_empty() && l6.snapshot.desired().problems.is_empty());
}

#[test]
fn a_kustomization_that_fails_to_build_holds_its_objects_and_names_kustomizes_message() {
    let r = Repos::new();
    r.write("app/kustomization.yaml", "resources: [cm.yaml]\n");
    r.write("app/cm.yaml", &cm("app"));
    let c1 = r.commit_push("an app");
    let repo = GitRepo::open(Location::Local(r.bare.clone()), None, "", &r.data).unwrap();
    let l1 = repo.load(repo.tip().unwrap()).unwrap();
    let p1 = plan(&AppliedSet::new(), &l1.snapshot.desired(), &c1, true);
    assert_eq!(p1.create.len(), 1);
    for (broken, message) in [
        ("resources: [cm.yaml, gone.yaml]\n", "gone.yaml"),
        (
            "resources: [cm.yaml, cm.yaml]\n",
            "may not add resource with an already registered id",
        ),
        ("resources: [cm.yaml]\npatches:\n- path: nope.yaml\n", "nope.yaml"),
        ("resources: [cm.yaml\n", "kustomization.yaml:"),
        ("resources: [../app]\n", "cycle"),
        (
            "resources: [cm.yaml]\nconfigMapGenerator:\n- name: g\n  files: [missing.txt]\n",
            "missing.txt",
        ),
    ] {
        r.write("app/kustomization.yaml", broken);
        let c2 = r.commit_push("broken");
        let l2 = repo.load_since(&l1, repo.tip().unwrap()).unwrap();
        let d2 = l2.snapshot.desired();
        let p2 = plan_delta(&p1.next, &d2, l2.snapshot.delta().unwrap(), &c2, true);
        assert!(p2.prune.is_empty(), "{broken}: nothing pruned");
        assert_eq!(p2.held.len(), 1, "{broken}: the app is held at its last good version");
        let lines: Vec<String> = d2.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("app/kustomization.yaml:") && lines[0].contains(message),
            "{broken}: {lines:?}"
        );
    }
}
