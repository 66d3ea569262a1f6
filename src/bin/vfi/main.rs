//! `vfi`: the command-line client of vfi-orchestrator. A second binary of the package (so its
//! integration tests in tests/cli.rs start it as `CARGO_BIN_EXE_vfi` against the real service);
//! it speaks only the HTTP API and imports nothing of the server's code.
//!
//! Exit codes: 0 succeeded (or done), 1 the run failed, 2 cancelled or lost, 3 usage or API
//! error, 130 stopped following with Ctrl-C (the run goes on).

mod api;
mod args;
mod config;
mod logs;
mod show;

use anyhow::Context as _;
use api::Api;
use args::{Cli, Command, Output, RunArgs};
use clap::{CommandFactory, Parser};
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::time::Duration;

const USAGE_OR_API_ERROR: u8 = 3;
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(USAGE_OR_API_ERROR),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vfi: error: {error}");
            return ExitCode::from(USAGE_OR_API_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("vfi: error: {error:#}");
            ExitCode::from(USAGE_OR_API_ERROR)
        }
    }
}

/// What a finished run's status means as an exit code.
fn exit_code(status: &str) -> Option<u8> {
    match status {
        "succeeded" => Some(0),
        "failed" => Some(1),
        "cancelled" | "lost" => Some(2),
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let output = cli.global.output;
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "vfi", &mut std::io::stdout());
        return Ok(0);
    }
    let target = config::resolve(&cli.global)?;
    let api = Api::new(
        target,
        Duration::from_secs(cli.global.timeout.max(1)),
        cli.global.retries,
    )?;
    match cli.command {
        Command::Completion { .. } => unreachable!("answered above"),
        Command::Run(args) => start(&api, args, output).await,
        Command::Logs(args) => {
            let run = match (&args.run, &args.last) {
                (Some(run), _) => run.clone(),
                (None, Some(task)) => last_run(&api, task).await?,
                (None, None) => unreachable!("clap requires one"),
            };
            let outcome = print_logs(
                &api,
                &run,
                args.follow,
                args.failed,
                args.index,
                args.timestamps,
            );
            interruptible(&run, outcome).await
        }
        Command::Ls(args) => {
            let mut query = vec![("limit", args.limit.to_string())];
            if let Some(task) = args.task {
                query.push(("task", task));
            }
            if let Some(status) = args.status {
                query.push(("status", status));
            }
            let page = api.get("/v1/runs", &query).await?;
            show::runs(output, &page);
            Ok(0)
        }
        Command::Get(args) => {
            let run = api.get(&format!("/v1/runs/{}", args.run), &[]).await?;
            let pods = api.get(&format!("/v1/runs/{}/pods", args.run), &[]).await?;
            show::run(output, &run, &pods);
            Ok(0)
        }
        Command::Cancel(args) => {
            let run = api.post(&format!("/v1/runs/{}/cancel", args.run)).await?;
            show::run_line(output, &run);
            Ok(0)
        }
        Command::Rerun(args) => {
            let query = if args.failed_indexes {
                vec![("only", "failed-indexes".to_string())]
            } else {
                vec![]
            };
            let body = params_body(&args.params);
            let answer = api
                .create(
                    &format!("/v1/runs/{}/rerun", args.run),
                    &query,
                    body.as_ref(),
                )
                .await?;
            // One run, or `{"runs": [...]}` for failed indexes.
            match answer.get("runs") {
                Some(runs) => show::runs(output, &json!({ "items": runs })),
                None => show::run_line(output, &answer),
            }
            Ok(0)
        }
        Command::Tasks(command) => tasks(&api, command, output).await,
        Command::Tokens(command) => tokens(&api, command, output).await,
    }
}

/// `{"params": {...}}` from `-p name=value` options (values as text; the server reads integers
/// and booleans from text), or no body.
fn params_body(params: &[(String, String)]) -> Option<Value> {
    if params.is_empty() {
        return None;
    }
    let params: Map<String, Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Some(json!({ "params": params }))
}

/// `vfi run`: submit, then maybe follow or wait, and exit with the run's outcome.
async fn start(api: &Api, args: RunArgs, output: Output) -> anyhow::Result<u8> {
    let run = match (&args.task, &args.image) {
        (Some(task), _) => {
            let body = params_body(&args.params);
            api.create(&format!("/v1/tasks/{task}/runs"), &[], body.as_ref())
                .await?
        }
        (None, Some(image)) => {
            let mut template = json!({ "image": image });
            if !args.command.is_empty() {
                template["command"] = json!(args.command);
            }
            if let Some(namespace) = &args.namespace {
                template["namespace"] = json!(namespace);
            }
            api.create("/v1/runs", &[], Some(&json!({ "template": template })))
                .await?
        }
        (None, None) => unreachable!("clap requires a task or an image"),
    };
    let id = run["id"]
        .as_str()
        .context("the service answered a run without an id")?
        .to_string();
    if !args.follow && !args.wait {
        show::run_line(output, &run);
        return Ok(0);
    }
    // The log owns stdout while following; what the run is goes to stderr.
    eprintln!("vfi: run {id} {}", run["status"].as_str().unwrap_or(""));
    let outcome = async {
        if args.follow {
            print_logs(api, &id, true, false, None, false).await?;
        }
        let run = wait(api, &id).await?;
        let status = run["status"].as_str().unwrap_or_default();
        // With --follow, stdout is the log alone.
        if output == Output::Json && !args.follow {
            show::json(&run);
        }
        let reason = run["statusReason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        eprintln!("vfi: run {id} {status}{reason}");
        Ok(exit_code(status).unwrap_or(USAGE_OR_API_ERROR))
    };
    interruptible(&id, outcome).await
}

/// Runs `work` until it ends or Ctrl-C, which only stops this client: the run goes on.
async fn interruptible(
    id: &str,
    work: impl std::future::Future<Output = anyhow::Result<u8>>,
) -> anyhow::Result<u8> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nvfi: stopped following run {id}; it goes on (vfi get {id}, vfi cancel {id})");
            Ok(INTERRUPTED)
        }
    }
}

/// Polls the run until it has finished.
async fn wait(api: &Api, id: &str) -> anyhow::Result<Value> {
    let mut delay = Duration::from_millis(250);
    loop {
        let run = api.get(&format!("/v1/runs/{id}"), &[]).await?;
        if exit_code(run["status"].as_str().unwrap_or_default()).is_some() {
            return Ok(run);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn last_run(api: &Api, task: &str) -> anyhow::Result<String> {
    let page = api
        .get(
            "/v1/runs",
            &[("task", task.to_string()), ("limit", "1".into())],
        )
        .await?;
    page["items"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("task {task:?} has no runs"))
}

async fn print_logs(
    api: &Api,
    id: &str,
    follow: bool,
    failed: bool,
    index: Option<i32>,
    timestamps: bool,
) -> anyhow::Result<u8> {
    let run = api.get(&format!("/v1/runs/{id}"), &[]).await?;
    // As the plain-text log: a header before every pod's lines when the run has several and
    // no filter picks one; with a filter, from the second pod on.
    let several = index.is_none()
        && !failed
        && (run["template"]["completions"].as_i64().unwrap_or(1) > 1
            || api
                .get(&format!("/v1/runs/{id}/pods"), &[])
                .await?
                .as_array()
                .is_some_and(|pods| pods.len() > 1));
    let mut stdout = std::io::stdout().lock();
    let mut printer = logs::Printer::default();
    let pods: Vec<Option<String>> = if failed {
        let pods = api.get(&format!("/v1/runs/{id}/pods"), &[]).await?;
        let failed: Vec<Option<String>> = pods
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["phase"] == "Failed" || p["exitCode"].as_i64().is_some_and(|c| c != 0))
            .filter_map(|p| p["name"].as_str().map(|n| Some(n.to_string())))
            .collect();
        if failed.is_empty() {
            eprintln!("vfi: run {id} has no failed pod");
            return Ok(0);
        }
        failed
    } else {
        vec![None]
    };
    let several = several || pods.len() > 1;
    for pod in pods {
        let request = logs::LogRequest {
            run: id.to_string(),
            follow,
            pod,
            index,
            timestamps,
            several,
        };
        logs::print(api, &request, &mut printer, &mut stdout).await?;
    }
    Ok(0)
}

async fn tasks(api: &Api, command: args::TasksCommand, output: Output) -> anyhow::Result<u8> {
    match command {
        args::TasksCommand::Ls => {
            let page = api.get("/v1/tasks", &[]).await?;
            show::tasks(output, &page);
        }
        args::TasksCommand::Get { name } => {
            let task = api.get(&format!("/v1/tasks/{name}"), &[]).await?;
            show::json(&task);
        }
        args::TasksCommand::Apply { file, name } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            // YAML is a superset of JSON: one parser for both.
            let mut spec: Value = serde_norway::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            let in_file = spec
                .as_object_mut()
                .with_context(|| format!("{} is not a mapping", file.display()))?
                .remove("name");
            let name = match (name, in_file) {
                (Some(name), _) => name,
                (None, Some(Value::String(name))) => name,
                _ => anyhow::bail!(
                    "the task has no name: add `name:` to {} or pass --name",
                    file.display()
                ),
            };
            let task = api.put(&format!("/v1/tasks/{name}"), &spec).await?;
            match output {
                Output::Json => show::json(&task),
                Output::Table => println!("task {name} applied"),
            }
        }
    }
    Ok(0)
}

async fn tokens(api: &Api, command: args::TokensCommand, output: Output) -> anyhow::Result<u8> {
    match command {
        args::TokensCommand::Ls => {
            let tokens = api.get("/v1/tokens", &[]).await?;
            show::tokens(output, &tokens);
        }
        args::TokensCommand::Create {
            name,
            scope,
            tasks,
            max_active_runs,
        } => {
            let mut body = json!({ "name": name, "scope": scope });
            if !tasks.is_empty() {
                body["tasks"] = json!(tasks);
            }
            if let Some(max) = max_active_runs {
                body["maxActiveRuns"] = json!(max);
            }
            let created = api.create("/v1/tokens", &[], Some(&body)).await?;
            match output {
                Output::Json => show::json(&created),
                // The token alone on stdout, so scripts can capture it; it is never shown again.
                Output::Table => println!("{}", created["token"].as_str().unwrap_or_default()),
            }
        }
        args::TokensCommand::Revoke { id } => {
            api.delete(&format!("/v1/tokens/{id}")).await?;
            if output == Output::Table {
                println!("token {id} revoked");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_runs_outcome() {
        assert_eq!(exit_code("succeeded"), Some(0));
        assert_eq!(exit_code("failed"), Some(1));
        assert_eq!(exit_code("cancelled"), Some(2));
        assert_eq!(exit_code("lost"), Some(2));
        assert_eq!(exit_code("running"), None, "not finished");
    }

    #[test]
    fn parameters_split_at_the_first_equals_sign() {
        let cli = Cli::try_parse_from(["vfi", "run", "t", "-p", "a=b=c", "-p", "empty="]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("a run")
        };
        assert_eq!(
            args.params,
            [("a".into(), "b=c".into()), ("empty".into(), String::new())]
        );
        assert!(Cli::try_parse_from(["vfi", "run", "t", "-p", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["vfi", "run", "t", "-p", "=x"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
