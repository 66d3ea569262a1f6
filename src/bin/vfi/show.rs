//! What `vfi` prints on stdout: tables for people, the API's JSON for scripts (`-o json`).

use crate::args::Output;
use comfy_table::{presets::NOTHING, Table};
use serde_json::Value;

pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    table
}

fn run_row(run: &Value) -> Vec<String> {
    vec![
        text(&run["id"]),
        run["task"].as_str().unwrap_or("(ad hoc)").to_string(),
        text(&run["number"]),
        text(&run["status"]),
        text(&run["statusReason"]),
        text(&run["createdAt"]),
    ]
}

const RUN_HEADER: [&str; 6] = ["ID", "TASK", "NUMBER", "STATUS", "REASON", "CREATED"];

/// A page of runs (`{"items": [...]}`).
pub fn runs(output: Output, page: &Value) {
    if output == Output::Json {
        return json(page);
    }
    let mut table = table(&RUN_HEADER);
    for run in page["items"].as_array().into_iter().flatten() {
        table.add_row(run_row(run));
    }
    println!("{table}");
}

/// One run, as one row.
pub fn run_line(output: Output, run: &Value) {
    if output == Output::Json {
        return json(run);
    }
    let mut table = table(&RUN_HEADER);
    table.add_row(run_row(run));
    println!("{table}");
}

/// One run in full: status, reason, queue position while waiting, and its pods.
pub fn run(output: Output, run: &Value, pods: &Value) {
    if output == Output::Json {
        // The API's answer as is (its pod records are `GET /v1/runs/{id}/pods`).
        return json(run);
    }
    let mut fields = table(&["FIELD", "VALUE"]);
    let counts = &run["pods"];
    let rows = [
        ("id", text(&run["id"])),
        (
            "task",
            run["task"].as_str().unwrap_or("(ad hoc)").to_string(),
        ),
        ("number", text(&run["number"])),
        ("status", text(&run["status"])),
        ("reason", text(&run["statusReason"])),
        ("message", text(&run["statusMessage"])),
        ("created", text(&run["createdAt"])),
        ("started", text(&run["startedAt"])),
        ("finished", text(&run["finishedAt"])),
        (
            "job",
            match run["job"].is_object() {
                true => format!(
                    "{}/{}",
                    text(&run["job"]["namespace"]),
                    text(&run["job"]["name"])
                ),
                false => "-".into(),
            },
        ),
        (
            "pods",
            format!(
                "{} active, {} succeeded, {} failed",
                text(&counts["active"]),
                text(&counts["succeeded"]),
                text(&counts["failed"])
            ),
        ),
    ];
    for (field, value) in rows {
        fields.add_row(vec![field.to_string(), value]);
    }
    if let Some(queue) = run["queue"].as_object() {
        let key = queue.get("key").map(text).unwrap_or_else(|| "-".into());
        let position = queue.get("position").map(text).unwrap_or_default();
        let reason = queue.get("reason").map(text).unwrap_or_default();
        fields.add_row(vec![
            "queue".to_string(),
            format!("position {position} on key {key} ({reason})"),
        ]);
        let blocked: Vec<String> = queue
            .get("blockedBy")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        if !blocked.is_empty() {
            fields.add_row(vec!["blocked by".to_string(), blocked.join(", ")]);
        }
    }
    println!("{fields}");
    let list = pods.as_array().map(Vec::as_slice).unwrap_or_default();
    if !list.is_empty() {
        let mut table = table(&[
            "POD", "INDEX", "PHASE", "EXIT", "REASON", "RESTARTS", "NODE",
        ]);
        for pod in list {
            table.add_row(vec![
                text(&pod["name"]),
                text(&pod["completionIndex"]),
                text(&pod["phase"]),
                text(&pod["exitCode"]),
                text(&pod["reason"]),
                text(&pod["restarts"]),
                text(&pod["nodeName"]),
            ]);
        }
        println!("\n{table}");
    }
}

pub fn tasks(output: Output, page: &Value) {
    if output == Output::Json {
        return json(page);
    }
    let mut table = table(&["NAME", "IMAGE", "SCHEDULE", "DESCRIPTION"]);
    for task in page["items"].as_array().into_iter().flatten() {
        table.add_row(vec![
            text(&task["name"]),
            text(&task["template"]["image"]),
            text(&task["schedule"]),
            text(&task["description"]),
        ]);
    }
    println!("{table}");
}

pub fn tokens(output: Output, tokens: &Value) {
    if output == Output::Json {
        return json(tokens);
    }
    let items = tokens
        .get("items")
        .and_then(Value::as_array)
        .or_else(|| tokens.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut table = table(&["ID", "NAME", "SCOPE", "TASKS", "CREATED", "LAST USED"]);
    for token in items {
        let tasks = token["tasks"]
            .as_array()
            .map(|t| t.iter().map(text).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "*".into());
        table.add_row(vec![
            text(&token["id"]),
            text(&token["name"]),
            text(&token["scope"]),
            tasks,
            text(&token["createdAt"]),
            text(&token["lastUsedAt"]),
        ]);
    }
    println!("{table}");
}
