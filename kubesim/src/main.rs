//! The `kubesim` binary: parses flags, starts a [`kubesim::KubeSim`], writes a kubeconfig and
//! serves until Ctrl-C. Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kubesim::{KubeSim, RunnerKind, SimConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runner {
    /// Containers behave as their KUBESIM_* env vars say (nothing is executed).
    Scripted,
    /// Containers' command + args really run on this host (the image is ignored).
    Host,
}

/// A Kubernetes API server + Job controller + kubelet simulator.
///
/// Point kubectl at it with the kubeconfig it writes:
///
///     KUBECONFIG=./kubesim.kubeconfig kubectl get jobs
///     KUBECONFIG=./kubesim.kubeconfig kubectl create job pi --image=perl -- perl -le 'print 1'
///
/// or point a service at it the same way (KUBECONFIG), or at --addr over plain HTTP without
/// auth. See kubesim/README.md for the scripted runner's KUBESIM_* env vars.
#[derive(Debug, Parser)]
#[command(name = "kubesim", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, env = "KUBESIM_ADDR", default_value = "127.0.0.1:8001")]
    addr: SocketAddr,
    /// How containers run.
    #[arg(long, env = "KUBESIM_RUNNER", value_enum, default_value = "scripted")]
    runner: Runner,
    /// Pods that may be bound to the node at once; the rest stay Pending (Unschedulable).
    #[arg(long, env = "KUBESIM_NODE_CAPACITY", default_value_t = 1000)]
    node_capacity: usize,
    /// Delay between scheduling a pod and its container running, in milliseconds.
    #[arg(long, env = "KUBESIM_START_DELAY_MS", default_value_t = 10)]
    start_delay_ms: u64,
    /// Watch events kept per kind; older resourceVersions get 410 Expired.
    #[arg(long, env = "KUBESIM_WATCH_HISTORY", default_value_t = 10_000)]
    watch_history: usize,
    /// Where to write a kubeconfig for this simulator.
    #[arg(
        long,
        env = "KUBESIM_KUBECONFIG",
        default_value = "./kubesim.kubeconfig"
    )]
    kubeconfig: PathBuf,
    /// Container logs rotate past this many bytes (the kubelet's containerLogMaxSize); 0 never
    /// rotates.
    #[arg(long, env = "KUBESIM_LOG_ROTATE_BYTES", default_value_t = kubesim::logs::ROTATE_BYTES)]
    log_rotate_bytes: u64,
    /// Seconds after a deleted pod's containers ended before their logs are removed (container
    /// garbage collection); a negative value keeps them while the pod object exists.
    #[arg(
        long,
        env = "KUBESIM_LOG_REMOVAL_DELAY_SECS",
        default_value_t = 60,
        allow_negative_numbers = true
    )]
    log_removal_delay_secs: i64,
    /// First restart back-off of a failed container in milliseconds (CrashLoopBackOff,
    /// doubling per restart; the kubelet's is 10000); 0 restarts at once.
    #[arg(long, env = "KUBESIM_RESTART_BACKOFF_MS", default_value_t = 0)]
    restart_backoff_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kubesim=info".into()),
        )
        .init();
    let args = Args::parse();
    let sim = KubeSim::start(SimConfig {
        runner: match args.runner {
            Runner::Scripted => RunnerKind::Scripted,
            Runner::Host => RunnerKind::Host,
        },
        node_capacity: args.node_capacity,
        start_delay: Duration::from_millis(args.start_delay_ms),
        watch_history: args.watch_history,
        addr: args.addr,
        log_rotate_bytes: (args.log_rotate_bytes > 0).then_some(args.log_rotate_bytes),
        log_removal_delay: u64::try_from(args.log_removal_delay_secs)
            .ok()
            .map(Duration::from_secs),
        restart_backoff: Duration::from_millis(args.restart_backoff_ms),
    })
    .await?;
    sim.write_kubeconfig(&args.kubeconfig)?;
    tracing::info!(url = %sim.url(), kubeconfig = %args.kubeconfig.display(), "kubesim ready");
    println!(
        "kubesim listening on {}\nexport KUBECONFIG={}",
        sim.url(),
        args.kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
