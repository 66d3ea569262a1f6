//! `vfi-orchestrator dev`: everything needed to try the service on one machine, in one command.
//! Starts (or reuses) a local PostgreSQL in a data folder, kubesim in-process with the host
//! runner, applies migrations and serves the API without authentication; Ctrl-C stops what it
//! started, PostgreSQL included. This is the only module that uses kubesim, and the service's
//! normal paths never come here.

use crate::app::{self, App};
use crate::config::{Cli, Command, DevArgs, DevCluster, DevRunner, ServeArgs};
use crate::store;
use anyhow::{bail, Context};
use clap::Parser;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use tokio_util::sync::CancellationToken;

const CALCULATEPI: &str = r#"{"template": {"image": "perl:5.34.0", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}}"#;

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    port_is_free(args.listen)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;

    let postgres = match &args.database_url {
        Some(_) => None,
        None => Some(Postgres::start(&data_dir)?),
    };
    let database_url = match (&args.database_url, &postgres) {
        (Some(url), _) => url.clone(),
        (None, Some(pg)) => pg.url(),
        (None, None) => unreachable!("a PostgreSQL was started"),
    };

    let (client, sim, kubeconfig) = match args.cluster {
        DevCluster::Kubesim => {
            let sim = kubesim::KubeSim::start(kubesim::SimConfig {
                runner: match args.runner {
                    DevRunner::Host => kubesim::RunnerKind::Host,
                    DevRunner::Scripted => kubesim::RunnerKind::Scripted,
                },
                ..kubesim::SimConfig::default()
            })
            .await
            .context("starting kubesim")?;
            let kubeconfig = data_dir.join("kubeconfig");
            sim.write_kubeconfig(&kubeconfig)
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            (sim.client(), Some(sim), Some(kubeconfig))
        }
        DevCluster::Kubeconfig => (
            kube::Client::try_default().await.context(
                "no Kubernetes configuration: set KUBECONFIG, or leave out --cluster kubeconfig to use kubesim",
            )?,
            None,
            None,
        ),
    };

    let serve = serve_args(&args, &database_url)?;
    let db = store::pool(&database_url, serve.database.db_max_connections)
        .context("invalid database URL")?;
    let app = App::new(&serve, db, client).await.with_context(|| {
        format!("starting the service on {database_url} (is that PostgreSQL reachable?)")
    })?;
    let addr = app.local_addr()?;
    tracing::warn!(
        "dev mode has NO AUTHENTICATION: anyone who can reach {addr} can start runs{}",
        if sim.is_some() && args.runner == DevRunner::Host {
            ", and kubesim's host runner executes their commands on this machine"
        } else {
            ""
        }
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "dev mode listens beyond this machine");
    }
    println!(
        "{}",
        banner(
            addr,
            &database_url,
            postgres.as_ref().map(|p| p.data.as_path()),
            kubeconfig.as_deref()
        )
    );

    let shutdown = CancellationToken::new();
    app::cancel_on_signal(shutdown.clone());
    let result = app.run(shutdown).await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    if let Some(postgres) = postgres {
        postgres.stop();
    }
    result
}

/// `serve`'s settings for dev mode: its defaults (and environment), with dev mode's database,
/// address and cluster settings.
fn serve_args(args: &DevArgs, database_url: &str) -> anyhow::Result<ServeArgs> {
    let listen = args.listen.to_string();
    let argv = [
        "vfi-orchestrator",
        "serve",
        "--database-url",
        database_url,
        "--listen",
        &listen,
        "--db-max-connections",
        "10",
        "--shutdown-timeout-secs",
        "5",
        // Dev mode is for one person on loopback; the service logs a warning that auth is off.
        "--auth-disabled",
        // Dashboards and curl loops poll fast; no limit on one's own machine.
        "--rate-limit-per-second",
        "0",
    ];
    let Command::Serve(mut serve) = Cli::try_parse_from(argv)?.command else {
        unreachable!("parsed a serve command")
    };
    serve.cluster = args.cluster_args.clone();
    Ok(serve)
}

fn port_is_free(addr: SocketAddr) -> anyhow::Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use (another `vfi-orchestrator dev` or service?): stop it, or \
             choose another address, e.g. `vfi-orchestrator dev --listen 127.0.0.1:8081`"
        ),
        Err(error) => Err(error).with_context(|| format!("cannot listen on {addr}")),
    }
}

fn banner(
    addr: SocketAddr,
    database_url: &str,
    postgres_data: Option<&Path>,
    kubeconfig: Option<&Path>,
) -> String {
    let base = format!("http://{addr}");
    let mut out = format!(
        "\nvfi-orchestrator dev is ready. Ctrl-C stops everything it started.\n\n  \
         dashboard   {base}/\n  \
         API         {base}/v1/runs\n  \
         API docs    {base}/docs\n  \
         events      {base}/v1/events\n  \
         metrics     {base}/metrics\n  \
         PostgreSQL  {database_url}\n"
    );
    if let Some(data) = postgres_data {
        out.push_str(&format!("              data in {}\n", data.display()));
    }
    if let Some(kubeconfig) = kubeconfig {
        out.push_str(&format!(
            "  kubectl     KUBECONFIG={} kubectl get jobs,pods\n",
            kubeconfig.display()
        ));
    }
    out.push_str(&format!(
        "\nStart the calculatepi Job from the Kubernetes documentation:\n\n  \
         curl -s -X POST {base}/v1/runs -H 'content-type: application/json' \\\n    \
         -d '{CALCULATEPI}'\n\n\
         then, with the run's id from the answer:\n\n  \
         curl -s {base}/v1/runs/<id>         # its status: queued, pending, running, succeeded\n  \
         curl -s {base}/v1/runs/<id>/pods    # its pod: phase, exit code, node, times\n  \
         curl -s {base}/v1/runs/<id>/logs    # its log: the digits of pi\n"
    ));
    out
}

/// A PostgreSQL server in a data folder, run as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root). Stopped on [`Postgres::stop`] or when dropped. Tests use
/// it too, for a server of their own they may stop and start again.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

impl Postgres {
    /// Starts (or reuses) the server whose data is in `dev_dir/postgres`, or, when this process
    /// is root and the `postgres` user cannot reach that folder (a clone inside a mode-700 home
    /// folder), in [`ROOT_DATA_PARENT`] under a name derived from `dev_dir`, so that the same
    /// clone finds its data again. The home folder's permissions are never changed.
    pub fn start(dev_dir: &Path) -> anyhow::Result<Postgres> {
        let data = dev_dir.join("postgres");
        let bin = find_pg_bin().context(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin. \
             Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install \
             postgresql`), or pass --database-url for a server you already have",
        )?;
        let as_postgres = running_as_root();
        if as_postgres {
            ensure_postgres_user()?;
        }
        let mut postgres = Postgres {
            bin,
            data: data.clone(),
            port: 0,
            as_postgres,
            stopped: true,
        };
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        if as_postgres {
            checked(
                Process::new("chown").arg("-R").arg("postgres").arg(&data),
                "giving the data folder to the postgres user",
            )?;
            if !postgres.can_use(&data) {
                let elsewhere = root_data_folder(dev_dir);
                tracing::info!(
                    unreachable = %data.display(),
                    data = %elsewhere.display(),
                    "the postgres user cannot reach the data folder (is it inside a mode-700 home folder?); keeping PostgreSQL's data elsewhere"
                );
                std::fs::remove_dir(&data).ok();
                std::fs::create_dir_all(&elsewhere)
                    .with_context(|| format!("cannot create {}", elsewhere.display()))?;
                checked(
                    Process::new("chown")
                        .arg("-R")
                        .arg("postgres")
                        .arg(&elsewhere),
                    "giving the data folder to the postgres user",
                )?;
                postgres.data = elsewhere;
            }
        }
        let data = postgres.data.clone();
        let data = data.as_path();
        if !data.join("PG_VERSION").exists() {
            tracing::info!(data = %data.display(), "creating a PostgreSQL database cluster");
            let output = postgres
                .command("initdb")
                .arg("-D")
                .arg(data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .output()
                .context("running initdb")?;
            if !output.status.success() {
                bail!(
                    "initdb failed in {}{}:\n{}",
                    data.display(),
                    if as_postgres {
                        " (as the postgres user, who must be able to reach that folder)"
                    } else {
                        ""
                    },
                    text(&output)
                );
            }
        } else {
            tracing::info!(data = %data.display(), "reusing the PostgreSQL data");
        }

        if let Some(port) = postgres.running_port() {
            tracing::info!(
                port,
                "reusing the PostgreSQL already running on this data folder"
            );
            postgres.port = port;
            postgres.stopped = false;
            return Ok(postgres);
        }
        postgres.port = free_port()?;
        postgres.launch()?;
        Ok(postgres)
    }

    /// Starts the server again after [`Postgres::stop_fast`], on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            self.launch()?;
        }
        Ok(())
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let postgres = self;
        let data = postgres.data.clone();
        let data = data.as_path();
        let log = data.join("server.log");
        let output = postgres
            .command("pg_ctl")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
                postgres.port
            ))
            .output()
            .context("running pg_ctl start")?;
        if !output.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "PostgreSQL did not start (data in {}):\n{}\n{}",
                data.display(),
                text(&output),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        postgres.stopped = false;
        tracing::info!(port = postgres.port, "PostgreSQL started");
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `bin/name`, as the postgres user when needed, in its own process group so that the
    /// terminal's Ctrl-C reaches only this process, which then stops the server in order.
    fn command(&self, name: &str) -> Process {
        let mut command = self.as_user(self.bin.join(name));
        command.stdin(Stdio::null()).process_group(0);
        command
    }

    /// `program`, as the postgres user when needed, from `/` (the postgres user may not be
    /// allowed into this process's working folder).
    fn as_user(&self, program: impl AsRef<std::ffi::OsStr>) -> Process {
        let mut command = if self.as_postgres {
            let mut command = Process::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command.current_dir("/");
            command
        } else {
            Process::new(program)
        };
        command.stdin(Stdio::null());
        command
    }

    /// Whether the server's user may read, write and enter `folder` (every folder above it
    /// must let it through).
    fn can_use(&self, folder: &Path) -> bool {
        self.as_user("test")
            .arg("-r")
            .arg(folder)
            .arg("-a")
            .arg("-w")
            .arg(folder)
            .arg("-a")
            .arg("-x")
            .arg(folder)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// The port of a server already running on this data folder (left by a `dev` that was
    /// killed), from its `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    pub fn stop(mut self) {
        self.stop_now();
    }

    /// Stops the server as `pg_ctl stop -m fast` does: open sessions end with SQLSTATE 57P01.
    pub fn stop_fast(&mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let result = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
        match result {
            Ok(output) if output.status.success() => tracing::info!("PostgreSQL stopped"),
            Ok(output) => tracing::warn!(output = %text(&output), "stopping PostgreSQL failed"),
            Err(error) => tracing::warn!(error = %error, "stopping PostgreSQL failed"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Where PostgreSQL's data goes when this process is root and the `postgres` user cannot
/// reach the dev folder.
const ROOT_DATA_PARENT: &str = "/var/lib/vfi-orchestrator/dev";

/// `ROOT_DATA_PARENT/<folder name>-<hash of its absolute path>/postgres`: one per dev folder,
/// recognizable by name.
fn root_data_folder(dev_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(dev_dir.as_os_str().as_encoded_bytes()));
    let parent = dev_dir
        .parent()
        .and_then(|p| p.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new(ROOT_DATA_PARENT)
        .join(format!("{parent}-{}", &hash[..12]))
        .join("postgres")
}

fn find_pg_bin() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|dir| has_tools(dir)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_tools(dir))
        .collect();
    // The newest installed version.
    versions.sort_by_key(|dir| {
        dir.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().or_else(|| {
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| has_tools(dir))
    })
}

fn running_as_root() -> bool {
    Process::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn ensure_postgres_user() -> anyhow::Result<()> {
    let exists = Process::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !exists {
        checked(
            Process::new("useradd").args(["--system", "--no-create-home", "postgres"]),
            "creating the postgres user (PostgreSQL refuses to run as root)",
        )?;
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("finding a free port for PostgreSQL")?
        .local_addr()?
        .port())
}

fn checked(command: &mut Process, what: &str) -> anyhow::Result<()> {
    let output = command.output().with_context(|| what.to_string())?;
    if !output.status.success() {
        bail!("{what} failed:\n{}", text(&output));
    }
    Ok(())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .trim()
    .to_string()
}
