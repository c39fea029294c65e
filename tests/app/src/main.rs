//! Capstan's test program, built as one static binary and put into images without a registry.
//! It plays every part the tests and the example need:
//!
//! - `serve` (default): an HTTP server with probe endpoints that can be switched off, an
//!   environment and file dump, the client's address as seen (`/whoami`), and a configurable
//!   exit, for node-agent and proxy tests (`TRICKLE=1`: every answer written one byte at a time),
//!   and `/control/burn?seconds=N` to keep a core busy (load for the autoscaler); with
//!   `RECORD=PATH` it appends its host name to PATH as it starts (what a volume keeps); the
//!   request's headers (`/headers`), a WebSocket echo on any path, `KEEP_ALIVE=1` to answer
//!   many requests per connection (benchmarks), and `LOG_REQUESTS=1` to print each request's
//!   method and path (what a mirror received);
//! - `guestbook`: the example's frontend, keeping entries in redis;
//! - `get URL`: an HTTP client that resolves names through the pod's resolv.conf; `resolve NAME`
//!   prints the address a name resolves to;
//! - `loop URL SECONDS [MILLIS]`: a client loop, one GET every MILLIS (default 100) for SECONDS,
//!   each failure printed, and how many failed (the exit code says whether any did);
//! - `connect ADDRESS:PORT`: whether a TCP connection is accepted (the API from a pod);
//! - `pause`: the pod sandbox, which only holds the network namespace;
//! - `sink PORT`, `blast ADDRESS:PORT SECONDS`, `dial ADDRESS:PORT COUNT`: the network benchmark's
//!   TCP server that discards what it reads, its throughput sender, and its connection timer;
//! - `exit CODE [SECONDS]`, `sleep SECONDS`, and `env NAME...` (the named variables).
//!
//! Only the standard library (and signal-hook), so that it links statically.

mod dns;
mod http;
mod redis;
mod ws;

use std::io::Write;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_secs(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("serve");
    match mode {
        "serve" => serve(),
        "guestbook" => guestbook(),
        "get" => get(&args[1..]),
        "resolve" => match args.get(1).map(|n| dns::resolve(n)) {
            Some(Ok(ip)) => println!("{ip}"),
            Some(Err(e)) => {
                eprintln!("{e}");
                exit(1);
            }
            None => {
                eprintln!("usage: resolve NAME");
                exit(2);
            }
        },
        "loop" => client_loop(&args[1..]),
        "connect" => connect(&args[1..]),
        "pause" => pause(),
        "sink" => sink(&args[1..]),
        "blast" => blast(&args[1..]),
        "dial" => dial(&args[1..]),
        "exit" => {
            let code = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            if let Some(s) = args.get(2).and_then(|s| s.parse::<f64>().ok()) {
                std::thread::sleep(Duration::from_secs_f64(s));
            }
            println!("exiting with {code}");
            exit(code);
        }
        "env" => {
            // The named variables as NAME=value lines (a Job's pod shows its index this way).
            for name in &args[1..] {
                println!("{name}={}", std::env::var(name).unwrap_or_default());
            }
        }
        "sleep" => {
            let s = args.get(1).and_then(|s| s.parse::<f64>().ok()).unwrap_or(3600.0);
            std::thread::sleep(Duration::from_secs_f64(s));
        }
        other => {
            eprintln!(
                "unknown mode {other:?}: serve, guestbook, get URL, loop URL SECONDS [MILLIS], connect ADDRESS:PORT, pause, sink PORT, blast ADDRESS:PORT SECONDS, dial ADDRESS:PORT COUNT, exit CODE [SECONDS], sleep SECONDS"
            );
            exit(2);
        }
    }
}

/// Waits for SIGTERM or SIGINT on a thread and calls `on_signal` once.
fn on_termination(on_signal: impl FnOnce(i32) + Send + 'static) {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).expect("signal handlers install");
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            on_signal(sig);
        }
    });
}

fn pause() {
    on_termination(|_| exit(0));
    loop {
        std::thread::park();
    }
}

/// The switches of the `serve` mode.
struct State {
    healthy: AtomicBool,
    ready: AtomicBool,
}

fn serve() {
    let port: u16 = env_or("PORT", "8080").parse().unwrap_or(8080);
    let state = Arc::new(State {
        healthy: AtomicBool::new(true),
        ready: AtomicBool::new(env_secs("READY_AFTER").is_none()),
    });
    if let Some(after) = env_secs("READY_AFTER") {
        let s = state.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(after));
            s.ready.store(true, Ordering::SeqCst);
        });
    }
    // RECORD=PATH: append the host name to PATH at every start (what a volume kept).
    if let Ok(path) = std::env::var("RECORD") {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", host.trim()));
        if let Err(e) = written {
            eprintln!("RECORD {path}: {e}");
        }
    }
    if let Some(after) = env_secs("EXIT_AFTER") {
        let code: i32 = env_or("EXIT_CODE", "1").parse().unwrap_or(1);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(after));
            println!("exiting with {code} after {after}s");
            exit(code);
        });
    }
    // On SIGTERM: stop being ready at once, then exit after TERM_DELAY seconds (default 0).
    let term_state = state.clone();
    on_termination(move |sig| {
        term_state.ready.store(false, Ordering::SeqCst);
        let delay = env_secs("TERM_DELAY").unwrap_or(0.0);
        println!("got signal {sig}, exiting in {delay}s");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs_f64(delay));
        exit(0);
    });
    let host = env_or("HOSTNAME", "unknown");
    println!("serving on :{port} as {host}");
    let _ = std::io::stdout().flush();
    let log_requests = std::env::var("LOG_REQUESTS").is_ok_and(|v| v == "1");
    http::serve(port, move |req| {
        if log_requests {
            println!("request {} {}", req.method, req.path);
            let _ = std::io::stdout().flush();
        }
        let flag = |b: bool| {
            if b {
                (200, "ok\n".to_string())
            } else {
                (503, "failing\n".to_string())
            }
        };
        match req.path.as_str() {
            "/" => (200, format!("hello from {host}\n")),
            "/healthz" => flag(state.healthy.load(Ordering::SeqCst)),
            // Who is asking, as this server sees it (no NAT between pods).
            "/whoami" => (200, format!("{}\n", req.peer)),
            // The request's headers, one per line (what a proxy in front added).
            "/headers" => (200, req.headers.join("\n") + "\n"),
            "/readyz" => flag(state.ready.load(Ordering::SeqCst)),
            "/env" => {
                let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                (200, vars.join("\n") + "\n")
            }
            "/file" => match req.query("path").map(std::fs::read_to_string) {
                Some(Ok(text)) => (200, text),
                Some(Err(e)) => (404, format!("{e}\n")),
                None => (400, "path= is required\n".into()),
            },
            "/control/healthy" => {
                state.healthy.store(req.query("v").as_deref() != Some("0"), Ordering::SeqCst);
                (200, "ok\n".into())
            }
            "/control/ready" => {
                state.ready.store(req.query("v").as_deref() != Some("0"), Ordering::SeqCst);
                (200, "ok\n".into())
            }
            "/control/burn" => {
                // Keeps one core busy for the seconds asked (load for the autoscaler).
                let secs: f64 = req.query("seconds").and_then(|c| c.parse().ok()).unwrap_or(10.0);
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
                    let mut x = 0u64;
                    while std::time::Instant::now() < until {
                        for i in 0..100_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                });
                (200, format!("burning for {secs}s\n"))
            }
            "/control/exit" => {
                let code: i32 = req.query("code").and_then(|c| c.parse().ok()).unwrap_or(1);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    exit(code);
                });
                (200, format!("exiting with {code}\n"))
            }
            _ => (404, format!("not found: {} on {host}\n", req.path)),
        }
    });
}

fn guestbook() {
    let port: u16 = env_or("PORT", "8080").parse().unwrap_or(8080);
    let redis_host = env_or("REDIS_HOST", "redis");
    let redis_port: u16 = env_or("REDIS_PORT", "6379").parse().unwrap_or(6379);
    let title = env_or("TITLE", "Guestbook");
    let host = env_or("HOSTNAME", "unknown");
    on_termination(|_| exit(0));
    let client = Arc::new(Mutex::new(None::<redis::Client>));
    let call = move |cmd: &[&str]| -> Result<redis::Reply, String> {
        let mut guard = client.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(redis::Client::connect(&redis_host, redis_port)?);
        }
        let result = guard.as_mut().expect("connected above").call(cmd);
        if result.is_err() {
            *guard = None; // reconnect next time
        }
        result
    };
    println!("guestbook on :{port}, redis at {}:{redis_port}", env_or("REDIS_HOST", "redis"));
    let _ = std::io::stdout().flush();
    http::serve(port, move |req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => (200, "ok\n".into()),
        ("GET", "/readyz") => match call(&["PING"]) {
            Ok(_) => (200, "ok\n".into()),
            Err(e) => (503, format!("redis: {e}\n")),
        },
        (_, "/entries") | (_, "/add") => {
            let entry = req.query("entry").or_else(|| req.form("entry")).unwrap_or_default();
            if entry.is_empty() {
                return (400, "entry= is required\n".into());
            }
            match call(&["RPUSH", "guestbook", &entry]) {
                Ok(_) => (200, "added\n".into()),
                Err(e) => (503, format!("redis: {e}\n")),
            }
        }
        ("GET", "/") => match call(&["LRANGE", "guestbook", "0", "-1"]) {
            Ok(redis::Reply::Array(items)) => {
                let list: String = items.iter().map(|i| format!("<li>{}</li>", http::escape(i))).collect();
                (
                    200,
                    format!(
                        "<!doctype html><title>{t}</title><h1>{t}</h1><ul>{list}</ul><form method=post action=/entries><input name=entry><button>Sign</button></form><footer>served by {host}</footer>\n",
                        t = http::escape(&title)
                    ),
                )
            }
            Ok(other) => (500, format!("unexpected reply {other:?}\n")),
            Err(e) => (503, format!("redis: {e}\n")),
        },
        _ => (404, "not found\n".into()),
    });
}

/// Opens a TCP connection to ADDRESS:PORT (a numeric address) and says whether it was accepted.
fn connect(args: &[String]) {
    let Some(addr) = args.first().and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("usage: connect ADDRESS:PORT");
        exit(2);
    };
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(_) => println!("connected to {addr}"),
        Err(e) => {
            eprintln!("connect {addr}: {e}");
            exit(1);
        }
    }
}

fn socket_arg(args: &[String], usage: &str) -> std::net::SocketAddr {
    args.first().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: {usage}");
        exit(2)
    })
}

/// Accepts connections on `PORT` and reads each to its end.
fn sink(args: &[String]) {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).unwrap_or(9000);
    on_termination(|_| exit(0));
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on :{port}: {e}");
        exit(1)
    });
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
        });
    }
}

/// The whole machine's CPU time so far (all cores, in /proc/stat's ticks: busy, idle) and its
/// context switches: /proc/stat is not namespaced, so a container reads the machine's.
fn machine_cpu() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let value = |line: &str, n: usize| line.split_whitespace().nth(n).and_then(|v| v.parse::<u64>().ok());
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal
    let busy = [1, 2, 3, 6, 7, 8].iter().map(|&n| value(cpu, n)).sum::<Option<u64>>()?;
    let idle = value(cpu, 4)? + value(cpu, 5)?;
    let switches = value(stat.lines().find(|l| l.starts_with("ctxt "))?, 1)?;
    Some((busy, idle, switches))
}

/// Writes to a sink for SECONDS; prints the bytes per second, then what the machine did
/// meanwhile (for the benchmark's account of where the time goes): its busy share of all
/// cores, and per GB sent its CPU time (ms) and context switches — or nothing more where
/// /proc/stat cannot be read.
fn blast(args: &[String]) {
    let addr = socket_arg(args, "blast ADDRESS:PORT SECONDS");
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| {
        eprintln!("connect {addr}: {e}");
        exit(1)
    });
    let buf = vec![0x5au8; 128 * 1024];
    let before = machine_cpu();
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        match stream.write(&buf) {
            Ok(n) => sent += n as u64,
            Err(e) => {
                eprintln!("write: {e}");
                exit(1)
            }
        }
    }
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    match before.zip(machine_cpu()) {
        Some(((b0, i0, c0), (b1, i1, c1))) => {
            // /proc/stat counts in USER_HZ ticks: 100 per second.
            let (busy, idle, gb) = ((b1 - b0) as f64, (i1 - i0) as f64, sent as f64 / 1e9);
            let share = busy / (busy + idle).max(1.0);
            println!("{rate:.0} {share:.3} {:.0} {:.0}", busy * 10.0 / gb, (c1 - c0) as f64 / gb);
        }
        None => println!("{rate:.0}"),
    }
}

/// Opens and closes COUNT connections one after another; prints the median set-up time (µs).
fn dial(args: &[String]) {
    let addr = socket_arg(args, "dial ADDRESS:PORT COUNT");
    let count: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100).max(1);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = std::time::Instant::now();
        if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            eprintln!("connect {addr}: {e}");
            exit(1)
        }
        samples.push(start.elapsed().as_micros());
    }
    samples.sort();
    println!("{}", samples[samples.len() / 2]);
}

fn client_loop(args: &[String]) {
    let (Some(url), Some(secs)) = (args.first(), args.get(1).and_then(|s| s.parse::<f64>().ok())) else {
        eprintln!("usage: loop URL SECONDS [MILLIS]");
        exit(2);
    };
    let every = Duration::from_millis(args.get(2).and_then(|m| m.parse().ok()).unwrap_or(100));
    let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
    let (mut sent, mut failed) = (0, 0);
    while std::time::Instant::now() < end {
        sent += 1;
        match http::get(url, Duration::from_secs(2)) {
            Ok((status, _)) if (200..300).contains(&status) => {}
            Ok((status, _)) => {
                failed += 1;
                println!("request {sent}: status {status}");
            }
            Err(e) => {
                failed += 1;
                println!("request {sent}: {e}");
            }
        }
        std::thread::sleep(every);
    }
    println!("{sent} requests, {failed} failed");
    exit(if failed == 0 { 0 } else { 1 });
}

fn get(args: &[String]) {
    let Some(url) = args.first() else {
        eprintln!("usage: get URL [COUNT]");
        exit(2);
    };
    let count: usize = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
    let mut failed = false;
    for _ in 0..count {
        match http::get(url, Duration::from_secs(5)) {
            Ok((status, body)) => {
                print!("{body}");
                if !(200..300).contains(&status) {
                    eprintln!("status {status}");
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("get {url}: {e}");
                failed = true;
            }
        }
    }
    let _ = std::io::stdout().flush();
    exit(if failed { 1 } else { 0 });
}
