//! The command line of `vfi`: one clap struct per command, global flags with their env vars.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// A command-line client for vfi-orchestrator: start runs and follow them to an exit code,
/// read and follow logs, list and rerun runs, manage tasks and tokens.
///
/// Exit codes: 0 succeeded, 1 failed, 2 cancelled or lost, 3 usage or API error, 130 stopped
/// following with Ctrl-C (the run goes on).
#[derive(Debug, Parser)]
#[command(name = "vfi", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The service's base URL, e.g. https://vfi.example.com (overrides the context's).
    #[arg(long, env = "VFI_URL", global = true)]
    pub url: Option<String>,
    /// The API token sent as `Authorization: Bearer` (overrides the context's).
    #[arg(long, env = "VFI_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The context of the config file to use (default: its `current-context`).
    #[arg(long, env = "VFI_CONTEXT", global = true)]
    pub context: Option<String>,
    /// The config file (default: ~/.config/vfi/config.yaml).
    #[arg(long, env = "VFI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Output: tables for people, JSON for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Seconds to wait for one API answer (not for streams, which have a read timeout).
    #[arg(long, env = "VFI_TIMEOUT", default_value_t = 30, global = true)]
    pub timeout: u64,
    /// How many times to retry a request after a connection error, a 5xx or a 429.
    #[arg(long, env = "VFI_RETRIES", default_value_t = 4, global = true)]
    pub retries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a run of a task, or an ad-hoc run with --image; optionally follow it to its end.
    Run(RunArgs),
    /// Print a run's logs, or follow them (-f) across dropped connections.
    Logs(LogsArgs),
    /// List runs, newest first.
    Ls(LsArgs),
    /// Show one run: status, reason, pods, queue position while it waits.
    Get(RunRef),
    /// Cancel a run (its Job is deleted).
    Cancel(RunRef),
    /// Run a run again, or only its failed indexes.
    Rerun(RerunArgs),
    /// List, show and apply tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// List, create and revoke API tokens (admin).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Print a shell completion script: `vfi completion bash > /etc/bash_completion.d/vfi`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["task", "image"])))]
pub struct RunArgs {
    /// The task to run.
    pub task: Option<String>,
    /// A parameter of the task run, `name=value` (repeatable).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param, conflicts_with = "image")]
    pub params: Vec<(String, String)>,
    /// An ad-hoc run of this image (the command follows `--`).
    #[arg(long, conflicts_with = "task")]
    pub image: Option<String>,
    /// The ad-hoc run's namespace.
    #[arg(long, requires = "image")]
    pub namespace: Option<String>,
    /// Stream the run's logs until it ends; exit with its outcome.
    #[arg(short, long)]
    pub follow: bool,
    /// Wait until the run ends (without its logs); exit with its outcome.
    #[arg(short, long)]
    pub wait: bool,
    /// The ad-hoc run's command and arguments.
    #[arg(last = true, requires = "image")]
    pub command: Vec<String>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["run", "last"])))]
pub struct LogsArgs {
    /// The run's id.
    pub run: Option<String>,
    /// The newest run of this task.
    #[arg(long, value_name = "TASK", conflicts_with = "run")]
    pub last: Option<String>,
    /// Follow: keep printing new lines until the run ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the pods that failed.
    #[arg(long, conflicts_with = "index")]
    pub failed: bool,
    /// Only the pod with this completion index.
    #[arg(long)]
    pub index: Option<i32>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only runs of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only runs in these statuses (comma list, e.g. failed,lost).
    #[arg(long)]
    pub status: Option<String>,
    /// How many runs (1 to 1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct RunRef {
    /// The run's id.
    pub run: String,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The run's id.
    pub run: String,
    /// Only the failed indexes of an Indexed run.
    #[arg(long)]
    pub failed_indexes: bool,
    /// A parameter value replacing the original's (repeatable); secret values are never kept,
    /// so a run with secret parameters is rerun only with each given again.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks.
    Ls,
    /// Show one task.
    Get { name: String },
    /// Create or replace a task from a YAML or JSON file (`name:` in it, or --name).
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// The task's name (default: the file's `name`).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List tokens.
    Ls,
    /// Create a token; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "run", "admin"])]
        scope: String,
        /// Limit the token to this task (repeatable).
        #[arg(long = "task")]
        tasks: Vec<String>,
        /// Unfinished runs the token may have at once (0: no limit).
        #[arg(long)]
        max_active_runs: Option<u32>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}
