//! `capstan status`: the sync state and each object's health, read from what Capstan writes into
//! Git — the status branch (`capstan/status`) and the note on the applied commit.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use capstan_api::text::printable;
use capstan_git::{notes, status_branch};
use serde_json::{Value, json};

use crate::output::{Format, outln, print_structured};

/// One line of health for an object on the status branch.
fn health(kind: &str, status: &Value) -> String {
    match kind {
        "Deployment" => format!(
            "{}/{} ready, {} up to date",
            status["readyReplicas"].as_i64().unwrap_or(0),
            status["replicas"].as_i64().unwrap_or(0),
            status["updatedReplicas"].as_i64().unwrap_or(0)
        ),
        "Pod" => {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let waiting = status["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|c| c["state"]["waiting"]["reason"].as_str());
            let phase = status["phase"].as_str().unwrap_or("Pending");
            match (waiting, ready) {
                (Some(w), _) => format!("{phase}, {w}"),
                (None, true) => format!("{phase}, ready"),
                (None, false) => format!("{phase}, not ready"),
            }
        }
        "Node" => {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"] == "True");
            match ready {
                Some(true) => "Ready".into(),
                Some(false) => "NotReady".into(),
                None => "Unknown".into(),
            }
        }
        _ => String::new(),
    }
}

pub fn run(repo: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let git = git2::Repository::discover(repo).with_context(|| format!("{} is not in a git repository", repo.display()))?;
    let status = status_branch::read(&git)?.context("no status branch (capstan/status) in this repository yet: is Capstan tracking it?")?;
    let desired = status.desired;
    let note = git2::Oid::from_str(&desired).ok().and_then(|oid| notes::read(&git, oid));
    let written = jiff::Timestamp::from_second(status.written_at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let objects = status.objects;

    if format != Format::Text {
        print_structured(
            format,
            &json!({"desiredCommit": desired, "statusWrittenAt": written, "note": note, "objects": objects}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("applied commit  {desired}");
    if let Some(n) = &note {
        outln!("applied at      {}", n.applied_at);
        outln!("outcome         {}", n.outcome.as_str());
        for q in &n.quarantined {
            let o = &q.object;
            outln!(
                "quarantined     {} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["namespace"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            );
        }
        for p in &n.problems {
            outln!(
                "problem         {}:{}: {}",
                printable(p["file"].as_str().unwrap_or_default()),
                p["line"],
                printable(p["message"].as_str().unwrap_or_default())
            );
        }
        for o in &n.held {
            let kind = o["kind"].as_str().unwrap_or_default();
            let why = if capstan_api::storage::holds_data(kind) {
                " (its data is kept: bring it back with capstan.dev/prune-data: \"true\" and remove it again to delete it)"
            } else {
                ""
            };
            outln!(
                "held            {kind} {}/{}{why}",
                o["namespace"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            );
        }
        if let Some(why) = &n.prune_held {
            outln!("prunes held     {}", printable(why));
        }
    }
    for o in objects.iter().filter(|o| o["status"]["problem"].is_string()) {
        let namespace = o["metadata"]["namespace"].as_str().map(|n| format!("{n}/")).unwrap_or_default();
        outln!(
            "problem         {} {namespace}{}: {}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default(),
            printable(o["status"]["problem"].as_str().unwrap_or_default())
        );
    }
    if let Some(cp) = objects.iter().find(|o| o["kind"] == "ControlPlane") {
        let s = &cp["status"];
        outln!("store           {}", s["store"].as_str().unwrap_or_default());
        if let Some(problem) = s["storeProblem"].as_str() {
            outln!("store problem   {}", printable(problem));
        }
        if let Some(leader) = s["leader"].as_str() {
            outln!("leader          {leader}");
        }
        let replicas: Vec<&str> = s["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["api"].as_str())
            .collect();
        if !replicas.is_empty() {
            outln!("replicas        {}", replicas.join(", "));
        }
    }
    outln!("status as of    {written}");
    outln!();
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["KIND", "NAMESPACE", "NAME", "HEALTH", "SOURCE"]);
    for o in objects
        .iter()
        .filter(|o| ["Deployment", "Pod", "Node"].contains(&o["kind"].as_str().unwrap_or_default()))
    {
        let kind = o["kind"].as_str().unwrap_or_default();
        table.add_row([
            kind.to_owned(),
            o["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
            o["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            health(kind, &o["status"]),
            printable(o["metadata"]["source"].as_str().unwrap_or("")).into_owned(),
        ]);
    }
    outln!("{table}");
    Ok(ExitCode::SUCCESS)
}
