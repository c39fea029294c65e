//! Loader and source benchmark. Prints:
//! - full load of a repository of 10,000 manifests (files of 1–5 documents), and the desired
//!   state and plan computed from it;
//! - re-load after a one-file change (tree diff, re-read of that file, desired state, plan);
//! - commit-to-desired-state latency for a local repository (notify path) and for a file://
//!   remote, polled and triggered (the webhook path);
//! - a 1 MiB file of 100,000 keys, and the worst alias bombs the reader's budget allows (time to
//!   refuse them and the peak memory of a process that does, beside a trivial file's);
//! - a repository of 100 kustomize roots (an app each, base and overlay; one base shared by
//!   three overlays): full load, and a one-file change in the shared base (three roots built
//!   again), each beside the same kustomize builds run directly, one after another.
//!
//! `cargo bench -p capstan-git --bench loader` (add `-- --quick` for the small run CI does).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_git::repo::{GitRepo, Location};
use capstan_git::source::{GitSource, SourceConfig, SourceEvent};
use capstan_manifest::desired::{AppliedSet, plan, plan_delta};
use git2::{Repository, Signature};

fn manifest(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: ns-{ns}\n  labels: {{app: app-{i}, team: t{t}}}\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n    metadata:\n      labels: {{app: app-{i}, team: t{t}}}\n    spec:\n      containers:\n      - name: web\n        image: registry.local/app:{i}\n        ports:\n        - {{name: http, containerPort: 8080}}\n        env:\n        - {{name: MODE, value: production}}\n        resources:\n          requests: {{cpu: 100m, memory: 64Mi}}\n          limits: {{cpu: 500m, memory: 256Mi}}\n        readinessProbe:\n          httpGet: {{path: /readyz, port: http}}\n",
            ns = i % 50,
            t = i % 7
        ),
        1 => format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{ns}\nspec:\n  selector: {{app: app-{i}}}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n",
            ns = i % 50
        ),
        _ => format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg-{i}\n  namespace: ns-{ns}\ndata:\n  LOG_LEVEL: info\n  FEATURE_X: \"true\"\n  LIMIT: \"100\"\n",
            ns = i % 50
        ),
    }
}

/// Writes `docs` manifests into files of 1–5 documents under `dir/apps`; returns the file count.
fn write_repo(dir: &Path, docs: usize) -> usize {
    let mut i = 0;
    let mut files = 0;
    while i < docs {
        let per_file = 1 + files % 5;
        let mut text = String::new();
        for _ in 0..per_file.min(docs - i) {
            text.push_str("---\n");
            text.push_str(&manifest(i));
            i += 1;
        }
        let sub = dir.join(format!("apps/group-{}", files % 40));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("file-{files}.yaml")), text).unwrap();
        files += 1;
    }
    files
}

use capstan_git::fixture::git;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

/// Makes a commit on `main` that changes one file, without moving any ref; returns its id.
fn prepare_commit(repo: &Repository, n: usize) -> git2::Oid {
    let parent = repo.find_reference("refs/heads/main").unwrap().peel_to_commit().unwrap();
    let tree = parent.tree().unwrap();
    let blob = repo
        .blob(format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-change\ndata:\n  n: \"{n}\"\n").as_bytes())
        .unwrap();
    let mut builder = git2::build::TreeUpdateBuilder::new();
    builder.upsert("bench-change.yaml", blob, git2::FileMode::Blob);
    let new_tree = repo.find_tree(builder.create_updated(repo, &tree).unwrap()).unwrap();
    let sig = Signature::now("Bench", "bench@example.com").unwrap();
    repo.commit(None, &sig, &sig, &format!("change {n}"), &new_tree, &[&parent])
        .unwrap()
}

/// Waits for the next commit from the source and computes its desired state.
fn await_commit(rt: &tokio::runtime::Runtime, rx: &mut tokio::sync::mpsc::Receiver<SourceEvent>) {
    let event = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), rx.recv()).await });
    match event.expect("source answers") {
        Some(SourceEvent::Commit(c)) => {
            let _ = c.loaded.snapshot.desired();
        }
        Some(SourceEvent::Failed(e)) => panic!("{e}"),
        None => panic!("source stopped"),
    }
}

/// A fraction in [0, 1) that differs from sample to sample (no RNG needed for a benchmark).
fn rand_fraction(n: usize) -> f64 {
    ((n as f64 + 1.0) * 0.618_033_988_75).fract()
}

fn latency(label: &str, samples: usize, location: Location, repo_dir: &Path, data: &Path, poll: Option<Duration>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = Repository::open(repo_dir).unwrap();
    let mut config = SourceConfig::new(location, data.to_path_buf());
    config.poll_interval = poll.unwrap_or(Duration::from_secs(600));
    let (source, mut rx) = GitSource::spawn(config);
    await_commit(&rt, &mut rx); // the initial full load
    let mut times = Vec::new();
    for n in 0..samples {
        let commit = prepare_commit(&repo, n);
        if let Some(p) = poll {
            // Land the commit at a random point of the poll cycle, as real pushes do.
            std::thread::sleep(p.mul_f64(rand_fraction(n)));
        }
        let start = Instant::now();
        repo.reference("refs/heads/main", commit, true, "bench").unwrap();
        if poll.is_none() && matches!(label, l if l.contains("trigger")) {
            source.trigger();
        }
        await_commit(&rt, &mut rx);
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "  {label:<46} p50 {:>9}  p99 {:>9}  ({samples} commits)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    );
}

/// Peak resident memory of this process so far (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Run in a child process of its own (so that its peak memory is its own): loads one file and
/// prints `milliseconds peak-MB problems`.
fn child_load(which: &str) {
    let text = match which {
        "floor" => "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: small}\n".to_owned(),
        // The worst bomb the budget lets through to its limit: ten-fold fan-out, nine levels.
        "bomb" => capstan_manifest::hostile::fan_out(10, 9),
        "string-bomb" => capstan_manifest::hostile::string_fan_out(1 << 20, 10_000),
        other => panic!("unknown load {other}"),
    };
    let t = Instant::now();
    let load = capstan_manifest::manifest::load_file("bomb.yaml", text.as_bytes());
    let elapsed = t.elapsed();
    println!("{:.2} {:.1} {}", elapsed.as_secs_f64() * 1e3, peak_rss_mb(), load.problems.len());
}

/// Loads `which` in a child process: (ms, peak MB, problems).
fn in_child(which: &str) -> (f64, f64, usize) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("CAPSTAN_BENCH_CHILD", which)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let mut next = || parts.next().and_then(|p| p.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (next(), next(), next() as usize)
}

/// Hostile and large files: a 1 MiB file of 100,000 keys, and the worst bombs the budget
/// allows, each beside the floor of loading a trivial file in the same kind of process.
fn hostile_figures(runs: usize) {
    let wide = capstan_manifest::hostile::wide_config_map(100_000);
    let keys = median_of(runs, || {
        let t = Instant::now();
        let load = capstan_manifest::manifest::load_file("wide.yaml", wide.as_bytes());
        assert!(load.problems.is_empty(), "{:?}", load.problems.first());
        t.elapsed()
    });
    let parse = median_of(runs, || {
        let t = Instant::now();
        let docs = capstan_manifest::yaml::parse(&wide).unwrap();
        let e = t.elapsed();
        drop(docs);
        e
    });
    let raw = median_of(runs, || {
        let t = Instant::now();
        let mut parser = serde_saphyr::granit_parser::Parser::new_from_str(&wide);
        let mut n = 0usize;
        while let Some(e) = parser.next_event() {
            let _ = e.unwrap();
            n += 1;
        }
        assert!(n > 200_000);
        t.elapsed()
    });
    let docs = capstan_manifest::yaml::parse(&wide).unwrap();
    let kind = capstan_api::kinds::by_kind("ConfigMap").unwrap();
    let convert = median_of(runs, || {
        let t = Instant::now();
        let mut issues = Vec::new();
        let v = capstan_manifest::shape::shape_of(kind).convert(&docs[0].root, &mut issues);
        let e = t.elapsed();
        drop(v);
        e
    });
    let object = capstan_manifest::shape::shape_of(kind).convert(&docs[0].root, &mut Vec::new());
    let decode = median_of(runs, || {
        let t = Instant::now();
        let r = kind.check(&object);
        assert!(r.is_ok());
        t.elapsed()
    });
    let values = median_of(runs, || {
        let t = Instant::now();
        let f = capstan_manifest::validate::check("ConfigMap", &object);
        assert!(f.is_empty());
        t.elapsed()
    });
    println!("hostile and large input:");
    println!(
        "  {:.2} MiB file of 100,000 keys, loaded       {:>9}   target < 100 ms",
        wide.len() as f64 / (1 << 20) as f64,
        ms(keys)
    );
    println!(
        "    YAML tree {} (floor: the event parser alone {}), schema and JSON {}, typed decode {}, value checks {}",
        ms(parse),
        ms(raw),
        ms(convert),
        ms(decode),
        ms(values)
    );
    let (_, floor_mb, _) = in_child("floor");
    for (which, label) in [
        ("bomb", "alias bomb (10-fold, 9 levels)"),
        ("string-bomb", "1 MiB string aliased 10,000 times"),
    ] {
        let (t, mb, problems) = in_child(which);
        assert_eq!(problems, 1, "{which} is refused");
        println!("  {label:<38} refused in {t:>6.1} ms, peak {mb:>5.1} MB (floor {floor_mb:.1} MB)   target < 100 ms, < 64 MB");
    }
}

fn main() {
    if let Ok(which) = std::env::var("CAPSTAN_BENCH_CHILD") {
        child_load(&which);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let docs = if quick { 1_000 } else { 10_000 };
    let runs = if quick { 2 } else { 5 };
    let samples = if quick { 5 } else { 30 };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let files = write_repo(&work, docs);
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "bench"]);
    let data = dir.path().join("data");

    println!(
        "loader benchmark{}: {docs} manifests in {files} files (1-5 documents each)",
        if quick { " (quick)" } else { "" }
    );
    let repo = GitRepo::open(Location::Local(work.clone()), None, "", &data).unwrap();
    let tip = repo.tip().unwrap();
    let mut loaded = None;
    let full = median_of(runs, || {
        let t = Instant::now();
        loaded = Some(repo.load(tip).unwrap());
        t.elapsed()
    });
    let loaded = loaded.unwrap();
    let in_memory = capstan_manifest::files::read_dir(&work).unwrap();
    let parse_only = median_of(runs, || {
        let t = Instant::now();
        let s = capstan_manifest::desired::Snapshot::load(in_memory.clone());
        let e = t.elapsed();
        drop(s);
        e
    });

    let mut desired = None;
    let assemble = median_of(runs, || {
        let t = Instant::now();
        desired = Some(loaded.snapshot.desired());
        t.elapsed()
    });
    let desired = desired.unwrap();
    assert!(desired.problems.is_empty(), "{:?}", desired.problems.first());
    assert_eq!(desired.objects.len(), docs);
    let applied = plan(&AppliedSet::new(), &desired, &tip.to_string(), true).next;
    println!(
        "  full load (read + parse + check)               {:>9}   target < 1000 ms",
        ms(full)
    );
    println!("    of which parse + check, from memory          {:>9}", ms(parse_only));
    println!("  desired state of the full tree                 {:>9}", ms(assemble));

    // One changed file.
    let target = work.join("apps/group-3/file-3.yaml");
    let text = std::fs::read_to_string(&target)
        .unwrap()
        .replacen("LIMIT: \"100\"", "LIMIT: \"200\"", 1)
        .replacen("replicas: 3", "replicas: 4", 1);
    std::fs::write(&target, text).unwrap();
    git(&work, &["commit", "-q", "-am", "one file"]);
    let repo = GitRepo::open(Location::Local(work.clone()), None, "", &data).unwrap();
    let tip2 = repo.tip().unwrap();
    let mut changed_plan = None;
    let reload = median_of(runs * 4, || {
        let t = Instant::now();
        let l2 = repo.load_since(&loaded, tip2).unwrap();
        let d2 = l2.snapshot.desired();
        changed_plan = Some(plan_delta(&applied, &d2, l2.snapshot.delta().unwrap(), &tip2.to_string(), true));
        t.elapsed()
    });
    let p = changed_plan.unwrap();

    assert!(!p.update.is_empty() && p.create.is_empty() && p.prune.is_empty());
    println!(
        "  one-file change: diff, re-read, desired, plan {:>10}   target < 50 ms",
        ms(reload)
    );

    hostile_figures(runs);
    kustomize_figures(if quick { 10 } else { 100 });

    println!("commit to desired state:");
    latency(
        "local repository (notify)",
        samples,
        Location::Local(work.clone()),
        &work,
        &data,
        None,
    );
    let bare = dir.path().join("bare.git");
    git(
        dir.path(),
        &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()],
    );
    let url = format!("file://{}", bare.display());
    latency(
        "file:// remote, webhook trigger",
        samples,
        Location::Remote(url.clone()),
        &bare,
        &data,
        None,
    );
    let poll = Duration::from_millis(if quick { 200 } else { 1000 });
    latency(
        &format!("file:// remote, polled every {} ms", poll.as_millis()),
        samples.min(10),
        Location::Remote(url),
        &bare,
        &data,
        Some(poll),
    );
    println!("  (local target < 200 ms; a polled remote waits half the interval on average)");
}

/// A repository of `roots` kustomize roots: apps with a base and an overlay each, and one base
/// shared by three overlays. Full load and a change in the shared base, beside `kubectl
/// kustomize` run on the same roots one after another (the floor; the loader runs as many
/// builds at once as there are cores).
fn kustomize_figures(roots: usize) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let write = |path: &str, text: &str| {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let app = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: web, image: \"registry.local/{name}:1\"}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n"
        )
    };
    let overlay = |base: &str, ns: &str| {
        format!(
            "resources: [{base}]\nnamespace: {ns}\nimages:\n- name: registry.local/app\n  newTag: \"2\"\nconfigMapGenerator:\n- name: settings\n  literals: [MODE={ns}]\n"
        )
    };
    let mut overlays = Vec::new();
    for i in 0..roots - 3 {
        write(&format!("apps/app-{i}/base/kustomization.yaml"), "resources: [app.yaml]\n");
        write(&format!("apps/app-{i}/base/app.yaml"), &app(&format!("app-{i}")));
        write(
            &format!("apps/app-{i}/overlay/kustomization.yaml"),
            &overlay("../base", &format!("ns-{i}")),
        );
        overlays.push(format!("apps/app-{i}/overlay"));
    }
    write("shared/base/kustomization.yaml", "resources: [app.yaml]\n");
    write("shared/base/app.yaml", &app("shared"));
    let shared: Vec<String> = ["a", "b", "c"].iter().map(|e| format!("shared/overlay-{e}")).collect();
    for (i, o) in shared.iter().enumerate() {
        write(&format!("{o}/kustomization.yaml"), &overlay("../base", &format!("shared-{i}")));
    }
    overlays.extend(shared.iter().cloned());
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "kustomize roots"]);
    let build = |d: &String| {
        let out = Command::new("kubectl")
            .args(["kustomize", work.join(d).to_str().unwrap()])
            .output()
            .expect("kubectl kustomize runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let direct = |dirs: &[String]| {
        let t = Instant::now();
        dirs.iter().for_each(build);
        t.elapsed()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The same builds, as many at once as there are cores: what the machine can do.
    let direct_parallel = |dirs: &[String]| {
        let t = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| {
                    while let Some(d) = dirs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        build(d);
                    }
                });
            }
        });
        t.elapsed()
    };
    let repo = GitRepo::open(Location::Local(work.clone()), None, "", &dir.path().join("data")).unwrap();
    let kustomize = repo.kustomizer().expect("a kustomize to build with").describe();
    let t = Instant::now();
    let loaded = repo.load(repo.tip().unwrap()).unwrap();
    let full = t.elapsed();
    assert_eq!(loaded.roots_built, roots);
    assert!(
        loaded.snapshot.desired().problems.is_empty(),
        "{:?}",
        loaded.snapshot.desired().problems.first()
    );
    let full_direct = direct(&overlays);
    let full_parallel = direct_parallel(&overlays);
    write("shared/base/app.yaml", &app("shared").replace(":1", ":7"));
    git(&work, &["commit", "-q", "-am", "shared base changed"]);
    let t = Instant::now();
    let changed = repo.load_since(&loaded, repo.tip().unwrap()).unwrap();
    let change = t.elapsed();
    let change_direct = direct(&shared);
    println!("kustomize roots ({kustomize}):");
    println!(
        "  full load of {roots} roots                  {:>9}   direct builds one after another {} ({:.2}x of direct / {cores} cores; target <= 1.2x); {cores} at a time {} ({:.2}x)",
        ms(full),
        ms(full_direct),
        full.as_secs_f64() / (full_direct.as_secs_f64() / cores as f64),
        ms(full_parallel),
        full.as_secs_f64() / full_parallel.as_secs_f64()
    );
    println!(
        "  one-file change in a base of 3 overlays   {:>9}   {} roots built again; the 3 built directly {} ({:.2}x; target <= 1.2x)",
        ms(change),
        changed.roots_built,
        ms(change_direct),
        change.as_secs_f64() / change_direct.as_secs_f64()
    );
}
