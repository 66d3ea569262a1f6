//! The `kubesim` binary: parses flags, starts a [`kubesim::KubeSim`], writes a kubeconfig and
//! serves until Ctrl-C. Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kubesim::behaviour::Behaviour;
use kubesim::events::Recorder;
use kubesim::faults::{Fault, FaultKind};
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
    /// Record Events for what the Job controller, scheduler and kubelet do.
    #[arg(long, env = "KUBESIM_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    events: bool,
    /// Enforce Pod Security levels from the namespace label pod-security.kubernetes.io/enforce.
    #[arg(long, env = "KUBESIM_POD_SECURITY", default_value_t = true, action = clap::ArgAction::Set)]
    pod_security: bool,
    /// A ResourceQuota, `NAMESPACE/NAME:RESOURCE=QTY,...` (e.g. `default/compute:pods=2,requests.cpu=1`);
    /// repeatable.
    #[arg(long = "quota", env = "KUBESIM_QUOTAS", value_delimiter = ';', value_parser = parse_quota)]
    quotas: Vec<kubesim::admission::Quota>,
    /// A label of the node, `KEY=VALUE`; repeatable.
    #[arg(long = "node-label", env = "KUBESIM_NODE_LABELS", value_delimiter = ',', value_parser = parse_pair)]
    node_labels: Vec<(String, String)>,
    /// A taint of the node, `KEY=VALUE:EFFECT`; repeatable.
    #[arg(long = "node-taint", env = "KUBESIM_NODE_TAINTS", value_delimiter = ',', value_parser = parse_taint)]
    node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Allocatable resources of the node, `NAME=QTY` (e.g. `nvidia.com/gpu=2`, `cpu=4`);
    /// extended resources not listed are absent; repeatable.
    #[arg(long = "node-allocatable", env = "KUBESIM_NODE_ALLOCATABLE", value_delimiter = ',', value_parser = parse_pair)]
    node_allocatable: Vec<(String, String)>,
    /// Images that cannot be pulled (exact, or with a leading/trailing `*`); replaces the
    /// default list (`*:doesnotexist`, `invalid.example/*`, `*.invalid/*`).
    #[arg(
        long = "image-pull-fail",
        env = "KUBESIM_IMAGE_PULL_FAIL",
        value_delimiter = ','
    )]
    image_pull_fail: Option<Vec<String>>,
    /// The kubelet's first image pull back-off, in milliseconds (doubles up to 300 s).
    #[arg(long, env = "KUBESIM_IMAGE_PULL_BACKOFF_MS", default_value_t = 10_000)]
    image_pull_backoff_ms: u64,
    /// How long the kubelet waits before retrying a container stuck in
    /// `CreateContainerConfigError` (a missing Secret, ConfigMap or key), in milliseconds.
    #[arg(long, env = "KUBESIM_CONFIG_RETRY_MS", default_value_t = 10_000)]
    config_retry_ms: u64,
    /// RBAC mode: authorize every request against the Roles, ClusterRoles and bindings in
    /// these YAML files (repeat; e.g. `kubectl kustomize deploy/base > rbac.yaml`). The
    /// kubeconfig's token is an admin (`system:masters`).
    #[arg(
        long = "rbac-manifest",
        env = "KUBESIM_RBAC_MANIFESTS",
        value_delimiter = ','
    )]
    rbac_manifests: Vec<PathBuf>,
    /// RBAC mode: bearer tokens, one `token,user,uid,"group1,group2"` per line (kube-apiserver's
    /// --token-auth-file format); `system:serviceaccount:<ns>:<name>` users get the
    /// service-account groups.
    #[arg(long, env = "KUBESIM_TOKEN_AUTH_FILE")]
    token_auth_file: Option<PathBuf>,
    /// Faults in force from the start (repeatable), each `key=value,...` with the fields of
    /// the admin endpoint's JSON (`POST /kubesim/faults`, see kubesim/README.md): e.g.
    /// `--fault-error status=503,count=10,verb=POST`.
    #[arg(long, value_name = "SPEC")]
    fault_error: Vec<String>,
    /// Watch requests get a 410 Expired ERROR event, e.g. `count=3`.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    fault_watch_gone: Vec<String>,
    /// Requests are accepted and not answered, e.g. `seconds=20,verb=POST`.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    fault_hang: Vec<String>,
    /// Requests wait first, e.g. `delayMs=200`.
    #[arg(long, value_name = "SPEC")]
    fault_latency: Vec<String>,
    /// Every request gets 503, e.g. `seconds=10`.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    fault_outage: Vec<String>,
    /// Watch and log streams stay open without sending a byte, e.g. `seconds=30`.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    fault_stall_streams: Vec<String>,
    /// The Job controller and kubelet make no progress, e.g. `seconds=30`.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    fault_pause_controller: Vec<String>,
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
    /// doubling per restart up to 30 times it; the kubelet's is 10000, scaled down 100 times
    /// by default); 0 restarts at once.
    #[arg(long, env = "KUBESIM_RESTART_BACKOFF_MS", default_value_t = 100)]
    restart_backoff_ms: u64,
    /// Emulate Kueue: Jobs labelled `kueue.x-k8s.io/queue-name` are created suspended, get a
    /// `kueue.x-k8s.io/v1beta1` Workload and run once it is admitted
    /// (`POST /kubesim/kueue/admit/NS/WORKLOAD`, or `--kueue-auto-admit`).
    #[arg(long, env = "KUBESIM_KUEUE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    kueue: bool,
    /// With --kueue: admit every Workload as soon as it exists.
    #[arg(long, env = "KUBESIM_KUEUE_AUTO_ADMIT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    kueue_auto_admit: bool,
    /// With --kueue: a node label of the ResourceFlavor every admission assigns, `KEY=VALUE`,
    /// injected into the admitted Job's pod nodeSelector; repeatable.
    #[arg(long = "kueue-flavor-node-label", env = "KUBESIM_KUEUE_FLAVOR_NODE_LABELS", value_delimiter = ',', value_parser = parse_pair)]
    kueue_flavor_node_labels: Vec<(String, String)>,
}

impl Args {
    /// The `--fault-*` flags as faults, or the first one that does not parse.
    fn faults(&self) -> Result<Vec<Fault>, String> {
        let flags = [
            (FaultKind::Error, &self.fault_error),
            (FaultKind::WatchGone, &self.fault_watch_gone),
            (FaultKind::Hang, &self.fault_hang),
            (FaultKind::Latency, &self.fault_latency),
            (FaultKind::Outage, &self.fault_outage),
            (FaultKind::StallStreams, &self.fault_stall_streams),
            (FaultKind::PauseController, &self.fault_pause_controller),
        ];
        let mut faults = Vec::new();
        for (kind, specs) in flags {
            for spec in specs {
                faults.push(
                    Fault::from_flag(kind, spec)
                        .map_err(|e| format!("--fault {kind:?} {spec:?}: {e}"))?,
                );
            }
        }
        Ok(faults)
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_taint(s: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let (kv, effect) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE:EFFECT"))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(k8s_openapi::api::core::v1::Taint {
        key: key.into(),
        value: (!value.is_empty()).then(|| value.into()),
        effect: effect.into(),
        ..Default::default()
    })
}

fn parse_quota(s: &str) -> Result<kubesim::admission::Quota, String> {
    let bad = || format!("{s:?} is not NAMESPACE/NAME:RESOURCE=QTY,...");
    let (id, hard) = s.split_once(':').ok_or_else(bad)?;
    let (namespace, name) = id.split_once('/').ok_or_else(bad)?;
    let hard = hard.split(',').map(parse_pair).collect::<Result<_, _>>()?;
    Ok(kubesim::admission::Quota {
        namespace: namespace.into(),
        name: name.into(),
        hard,
    })
}

/// `--kueue*` as the simulator's Kueue settings (None without `--kueue`).
fn kueue(args: &Args) -> Option<kubesim::kueue::KueueConfig> {
    args.kueue.then(|| kubesim::kueue::KueueConfig {
        auto_admit: args.kueue_auto_admit,
        flavor_node_labels: args.kueue_flavor_node_labels.iter().cloned().collect(),
        ..Default::default()
    })
}

fn behaviour(args: &Args) -> Behaviour {
    let mut b = Behaviour {
        events: Recorder::new(args.events),
        ..Default::default()
    };
    b.admission.pod_security = args.pod_security;
    b.admission.quotas = args.quotas.clone();
    let node = &mut b.nodes[0];
    node.labels.extend(args.node_labels.iter().cloned());
    node.taints = args.node_taints.clone();
    node.allocatable = args.node_allocatable.iter().cloned().collect();
    if let Some(fail) = &args.image_pull_fail {
        b.image_pull.failing = fail.clone();
    }
    b.image_pull.initial_backoff = Duration::from_millis(args.image_pull_backoff_ms);
    b.config_retry = Duration::from_millis(args.config_retry_ms);
    b
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
    let faults = args.faults()?;
    let rbac = if args.rbac_manifests.is_empty() && args.token_auth_file.is_none() {
        None
    } else {
        let mut config = kubesim::rbac::RbacConfig::default();
        for path in &args.rbac_manifests {
            config = config.manifest(std::fs::read_to_string(path)?);
        }
        if let Some(path) = &args.token_auth_file {
            config = config.token_file(&std::fs::read_to_string(path)?)?;
        }
        Some(config)
    };
    let sim = KubeSim::start(SimConfig {
        runner: match args.runner {
            Runner::Scripted => RunnerKind::Scripted,
            Runner::Host => RunnerKind::Host,
        },
        node_capacity: args.node_capacity,
        start_delay: Duration::from_millis(args.start_delay_ms),
        watch_history: args.watch_history,
        addr: args.addr,
        rbac,
        behaviour: behaviour(&args),
        log_rotate_bytes: (args.log_rotate_bytes > 0).then_some(args.log_rotate_bytes),
        log_removal_delay: u64::try_from(args.log_removal_delay_secs)
            .ok()
            .map(Duration::from_secs),
        restart_backoff: Duration::from_millis(args.restart_backoff_ms),
        kueue: kueue(&args),
    })
    .await?;
    sim.write_kubeconfig(&args.kubeconfig)?;
    for fault in faults {
        sim.faults().add(fault)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_behaviour_flags_parse_into_the_simulators_settings() {
        let args = Args::try_parse_from([
            "kubesim",
            "--quota",
            "batch/compute:pods=2,requests.cpu=1",
            "--node-label",
            "gpu=true",
            "--node-taint",
            "dedicated=gpu:NoSchedule",
            "--node-allocatable",
            "nvidia.com/gpu=2",
            "--image-pull-fail",
            "registry.internal/*",
            "--events=false",
        ])
        .unwrap();
        let b = behaviour(&args);
        assert_eq!(b.admission.quotas[0].namespace, "batch");
        assert_eq!(b.admission.quotas[0].hard["requests.cpu"], "1");
        assert_eq!(b.nodes[0].labels["gpu"], "true");
        assert_eq!(b.nodes[0].taints[0].key, "dedicated");
        assert_eq!(b.nodes[0].taints[0].effect, "NoSchedule");
        assert_eq!(b.nodes[0].allocatable["nvidia.com/gpu"], "2");
        assert_eq!(b.image_pull.failing, ["registry.internal/*"]);
        assert!(b.admission.pod_security);
        let defaults = behaviour(&Args::try_parse_from(["kubesim"]).unwrap());
        assert!(defaults.image_pull.fails("x:doesnotexist", &[]));
        assert!(parse_quota("no-namespace").is_err());
    }

    #[test]
    fn kueue_flags_parse_and_kueue_is_off_by_default() {
        assert_eq!(kueue(&Args::try_parse_from(["kubesim"]).unwrap()), None);
        let args = Args::try_parse_from([
            "kubesim",
            "--kueue",
            "--kueue-auto-admit",
            "--kueue-flavor-node-label",
            "pool=batch",
        ])
        .unwrap();
        let k = kueue(&args).unwrap();
        assert!(k.auto_admit);
        assert_eq!(k.flavor_node_labels["pool"], "batch");
        let manual = kueue(&Args::try_parse_from(["kubesim", "--kueue"]).unwrap()).unwrap();
        assert!(!manual.auto_admit);
    }
}
