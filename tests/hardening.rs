//! Hostile and careless input through the public surfaces, as an attacker or a careless user
//! would send it: YAML bombs to `capstan validate` (under a memory limit and a timeout) and to
//! the daemon in a commit, thousands of idle and slow connections to the API while kubectl
//! works, watchers that never read while large objects change, output that could forge lines,
//! and a closed pipe.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstan_manifest::hostile;
use common::*;

/// Runs `capstan ARGS` with its address space limited to `mib` MiB, killed after `timeout`:
/// (exit code, stdout). A bomb that got past the budgets would exceed one or the other.
fn bounded_capstan(args: &[&str], mib: u64, timeout: Duration) -> (Option<i32>, String) {
    let script = format!("ulimit -v {}; exec \"$0\" \"$@\"", mib * 1024);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
            return (status.code(), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("capstan {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bombs, each in a file of its own, with the message its problem must carry.
fn bombs() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("chained-aliases.yaml", hostile::alias_chain(500), "nesting deeper than 100 levels"),
        (
            "string-bomb.yaml",
            hostile::string_fan_out(100_000, 50_000),
            "expands to more than 32 MiB",
        ),
        ("fan-out.yaml", hostile::fan_out(10, 9), "expands to more than 32 MiB"),
        ("deep-flow.yaml", hostile::flow_nesting(1_000_000), "nesting deeper than 100 levels"),
        (
            "huge.yaml",
            "# padding\n".repeat(1 << 20),
            "a manifest file may hold at most 8388608",
        ),
    ]
}

#[test]
fn validate_refuses_yaml_bombs_within_memory_and_time_bounds() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, _) in bombs() {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::write(dir.path().join("wide.yaml"), hostile::wide_config_map(100_000)).unwrap();
    let (code, out) = bounded_capstan(&["validate", path_str(dir.path())], 512, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{out}");
    for (name, _, message) in bombs() {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert!(line.contains(message), "{line}");
    }
    assert!(!out.contains("wide.yaml"), "100,000 keys are a valid file: {out}");
    assert!(out.contains("5 problems in 5 files (1 objects valid, 6 files checked)"), "{out}");
}

#[test]
fn a_hostile_commit_quarantines_its_files_and_the_daemon_keeps_serving_also_after_a_restart() {
    let mut c = Cluster::start(&[(
        "good.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\ndata: {v: '1'}\n",
    )]);
    c.wait_until("the first commit applied", || c.kubectl(&["get", "cm", "good"]).status.success());
    let mut files: Vec<(String, String)> = bombs().into_iter().map(|(n, t, _)| (n.to_owned(), t)).collect();
    files.push(("wide.yaml".into(), hostile::wide_config_map(20_000)));
    files.push((
        "later.yaml".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\n".into(),
    ));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    c.commit(&refs, &[], "hostile files beside good ones");
    c.wait_until("the good objects of the hostile commit applied", || {
        c.kubectl(&["get", "cm", "later"]).status.success() && c.kubectl(&["get", "cm", "wide"]).status.success()
    });
    let keys = c.kubectl_ok(&["get", "cm", "wide", "-o", "jsonpath={.data.k19999}"]);
    assert_eq!(keys, "v");
    // The same tip after a restart: read again in full, with the same limits.
    c.kill9_and_restart_daemon();
    c.wait_until("the restarted daemon answering", || {
        c.kubectl(&["get", "cm", "later"]).status.success()
    });
    c.wait_until("the tip applied again by the restarted daemon", || {
        c.log().matches("problems=5").count() >= 2
    });
    let log = c.log();
    assert!(!log.contains("panicked") && !log.contains("overflow"), "{log}");
}

/// A TCP connection to the API server that sends nothing.
fn idle(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    s
}

#[test]
fn idle_and_slow_clients_do_not_stop_the_api() {
    let c = Cluster::start(&[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")]);
    let addr = c.server().trim_start_matches("https://").to_owned();
    let mut sockets: Vec<TcpStream> = (0..2000).map(|_| idle(&addr)).collect();
    // A slowloris: TLS done, then a request's headers one byte every 500 ms.
    let mut slow = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut slow_in = slow.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for b in b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain([b'a'; 200].iter()) {
            if slow_in.write_all(&[*b]).is_err() || slow_in.flush().is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    for _ in 0..3 {
        let names = c.kubectl_ok(&["get", "cm", "-o", "name"]);
        assert!(names.contains("configmap/a"), "{names}");
    }
    // The server closes what sends nothing, and what sends too slowly.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    for s in sockets.iter_mut().step_by(100) {
        assert_eq!(s.read(&mut buf).unwrap(), 0, "an idle connection is closed by the server");
    }
    let closed_after = started.elapsed();
    assert!(closed_after < Duration::from_secs(40), "{closed_after:?}");
    let status = wait_exit(&mut slow, Duration::from_secs(30));
    assert!(status.is_some(), "the slow client was not closed");
    let _ = writer.join();
    assert!(c.kubectl(&["get", "cm"]).status.success());
    let log = c.log();
    assert!(log.lines().filter(|l| l.contains("accept")).count() < 5, "{log}");
}

/// The daemon's resident memory, in MB.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024
}

/// A ConfigMap of about 900 KB whose values change with `n`.
fn big_config_map(n: usize) -> String {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n");
    for k in 0..9 {
        text.push_str(&format!("  k{k}: \"{n}{}\"\n", "x".repeat(100_000)));
    }
    text
}

#[test]
fn watchers_that_never_read_do_not_make_changes_cost_memory() {
    let c = Cluster::start(&[("big.yaml", &big_config_map(0))]);
    c.wait_until("the big ConfigMap applied", || c.kubectl(&["get", "cm", "big"]).status.success());
    let addr = c.server().trim_start_matches("https://").to_owned();
    let kubeconfig = std::fs::read_to_string(c.kubeconfig()).unwrap();
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    // 40 watches whose clients never read what they are sent (their output is never drained).
    let request =
        format!("GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut watchers: Vec<std::process::Child> = (0..40)
        .map(|_| {
            let mut w = Command::new("openssl")
                .args(["s_client", "-quiet", "-connect", &addr])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            w.stdin.as_mut().unwrap().write_all(request.as_bytes()).unwrap();
            w
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_mb(c.child.id());
    // Each change of the 900 KB object reaches 40 stalled watchers: copied per watcher, ten
    // changes would cost about 360 MB; shared, they cost nothing per watcher.
    for n in 1..=10 {
        c.commit(&[("big.yaml", &big_config_map(n))], &[], "a change of the big ConfigMap");
        c.wait_until("the change applied", || {
            c.kubectl_ok(&["get", "cm", "big", "-o", "jsonpath={.data.k0}"])
                .starts_with(&n.to_string())
        });
    }
    let after = rss_mb(c.child.id());
    assert!(
        after < before + 150,
        "ten changes under 40 stalled watchers took the daemon from {before} MB to {after} MB"
    );
    assert!(c.kubectl(&["get", "cm", "big", "-o", "name"]).status.success());
    for w in &mut watchers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

#[test]
fn names_cannot_forge_output_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.yaml:1:1: all good\nforged.yaml"), "kind: [").unwrap();
    std::fs::write(dir.path().join("\u{1b}[2Jclear.yaml"), "kind: [").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("ok.yaml:1:1: all good\\nforged.yaml:1:"), "{text}");
    assert!(text.contains("\\u{1b}[2Jclear.yaml:1:"), "{text}");
    assert_eq!(text.lines().count(), 3, "two problems and the summary: {text}");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata: {{a: [1]}}\n"
        ));
    }
    std::fs::write(dir.path().join("many.yaml"), text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("validate")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
