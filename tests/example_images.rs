//! The example's images, built by examples-repo/images/build.sh without a registry, really work
//! together on the Docker Engine: the real redis-server (Debian's package) stores what the
//! guestbook frontend (our program) writes, and the frontend is ready only while redis answers.

mod common;

use std::time::{Duration, Instant};

use common::{DockerRun, build_images, docker_available};

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn guestbook_and_redis_images_work_together() {
    if !docker_available("guestbook_and_redis_images_work_together") {
        return;
    }
    build_images();
    let run = DockerRun::new("images");
    let net = run.network();
    let redis = run.container("redis", &net, &["capstan.local/redis:7", "--save", "", "--protected-mode", "no"]);
    let frontend = run.container(
        "frontend",
        &net,
        &[
            "-e",
            &format!("REDIS_HOST={redis}"),
            "-e",
            "TITLE=Test book",
            "capstan.local/guestbook:1",
            "guestbook",
        ],
    );
    let get = |path: &str| {
        run.oneoff(
            &net,
            &["capstan.local/testapp:latest", "get", &format!("http://{frontend}:8080{path}")],
        )
    };
    eventually("the frontend to be ready", || get("/readyz").status.success());
    assert!(get("/add?entry=first+entry").status.success());
    assert!(get("/add?entry=%3Cb%3Esecond%3C%2Fb%3E").status.success());
    let page = String::from_utf8_lossy(&get("/").stdout).into_owned();
    assert!(page.contains("<h1>Test book</h1>"), "{page}");
    assert!(page.contains("<li>first entry</li><li>&lt;b&gt;second&lt;/b&gt;</li>"), "{page}");

    // Without redis the frontend is alive but not ready.
    common::run_ok(std::process::Command::new("docker").args(["stop", "-t", "1", &format!("capstan-test-{}-redis", run.id)]));
    eventually("the frontend to turn unready", || !get("/readyz").status.success());
    assert!(get("/healthz").status.success());
}
