//! kubesim: a Kubernetes API server, Job controller and kubelet simulator that real clients
//! (kube-rs, kubectl) drive over HTTP. [`KubeSim::start`] binds a port, serves the API and runs
//! the control loop; [`Faults`] injects failures. See README.md for what is and is not
//! simulated.
//!
//! Module map: `store` (objects, resourceVersions, history), `api` (HTTP), `controller` (Job
//! controller, GC, TTL), `kubelet` (node, runners), `kueue` (Kueue's part, off by default),
//! `logs`, `faults`, plus pure helpers
//! (`selectors`, `patch`, `validation`, `objects`, `time`), and `timers` (what the control loop
//! must do when, shared by the controllers and the kubelet).

pub mod admission;
pub mod api;
pub mod behaviour;
pub mod configdata;
pub mod controller;
pub mod disruption;
pub mod error;
pub mod events;
pub mod faults;
pub mod kubelet;
pub mod kueue;
pub mod logs;
pub mod objects;
pub mod patch;
pub mod rbac;
pub mod scheduling;
pub mod selectors;
pub mod store;
pub mod time;
pub mod timers;
pub mod validation;
pub mod volumes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Status};
pub use faults::Faults;
pub use kubelet::{HostRunner, RunOutcome, RunSpec, Runner, ScriptedRunner};
pub use store::Store;

/// Which container runtime the simulated kubelet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunnerKind {
    /// Behaviour from `KUBESIM_*` env vars of the container (see [`kubelet::scripted`]).
    #[default]
    Scripted,
    /// Really runs `command` + `args` on the host (see [`kubelet::host`]).
    Host,
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub runner: RunnerKind,
    /// Max pods bound to the node (not yet terminal) at once; the rest stay Pending/Unschedulable.
    pub node_capacity: usize,
    /// Delay between a pod being bound (ContainerCreating) and its container running.
    pub start_delay: Duration,
    /// Events kept per kind for watch replay; older resourceVersions get 410 Expired.
    pub watch_history: usize,
    pub addr: SocketAddr,
    /// RBAC mode (see [`rbac`]): every request authenticated and authorized against the
    /// manifests' Roles and bindings. Off by default (every request allowed), so tests and dev
    /// mode need no credentials.
    pub rbac: Option<rbac::RbacConfig>,
    /// Events, admission, the node the scheduler fits pods to and image pulls; each default is
    /// what a fresh cluster does.
    pub behaviour: behaviour::Behaviour,
    /// Container log files rotate past this size, and readers that open a log then get only
    /// the current file (the kubelet's `containerLogMaxSize`, 10 MiB); `None` never rotates.
    pub log_rotate_bytes: Option<u64>,
    /// How long after a deleted pod's containers ended their logs are removed, as the
    /// kubelet's container garbage collection does (it runs every minute: `ContainerGCPeriod`
    /// in pkg/kubelet/kubelet.go); `None` keeps them as long as the pod object exists.
    pub log_removal_delay: Option<Duration>,
    /// The first restart back-off of a failed container (CrashLoopBackOff), doubling per
    /// restart up to 30 times it. The kubelet's is 10 s, doubling up to 5 min
    /// (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#restart-policy);
    /// the default, [`RESTART_BACKOFF`], is that scaled down 100 times (100 ms up to 3 s) to
    /// keep tests fast. Zero restarts at once.
    pub restart_backoff: Duration,
    /// Kueue's part (see [`kueue`]): Jobs labelled `kueue.x-k8s.io/queue-name` are created
    /// suspended and run once their Workload is admitted. `None` (the default): no Kueue, the
    /// label means nothing and the `kueue.x-k8s.io` API does not exist.
    pub kueue: Option<kueue::KueueConfig>,
}

/// The default first restart back-off: the kubelet's 10 s divided by 100 (so its 5-min cap
/// becomes 3 s).
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// How often watches that allow bookmarks get one (a real server: about a minute).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            runner: RunnerKind::Scripted,
            node_capacity: 1000,
            start_delay: Duration::from_millis(10),
            watch_history: 10_000,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rbac: None,
            behaviour: behaviour::Behaviour::default(),
            log_rotate_bytes: Some(logs::ROTATE_BYTES),
            log_removal_delay: Some(Duration::from_secs(60)),
            restart_backoff: RESTART_BACKOFF,
            kueue: None,
        }
    }
}

/// The token of the kubeconfig [`KubeSim::kubeconfig_yaml`] writes; in RBAC mode it
/// authenticates as a member of `system:masters`.
pub const ADMIN_TOKEN: &str = "kubesim";

/// A running simulator.
pub struct KubeSim {
    addr: SocketAddr,
    store: Arc<Store>,
    logs: Arc<logs::Logs>,
    faults: Faults,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    control: JoinHandle<()>,
}

fn namespace(name: &str) -> Namespace {
    let mut ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    validation::default_namespace(&mut ns);
    ns
}

impl KubeSim {
    /// Binds `config.addr`, starts the API server and the control loop, and returns once the
    /// server accepts connections.
    pub async fn start(config: SimConfig) -> Result<KubeSim, Error> {
        let runner: Arc<dyn Runner> = match config.runner {
            RunnerKind::Scripted => Arc::new(ScriptedRunner),
            RunnerKind::Host => Arc::new(HostRunner),
        };
        Self::start_with_runner(config, runner).await
    }

    /// Like [`KubeSim::start`] with a custom container runtime (`config.runner` is ignored).
    pub async fn start_with_runner(
        config: SimConfig,
        runner: Arc<dyn Runner>,
    ) -> Result<KubeSim, Error> {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let store = Arc::new(Store::new(config.watch_history));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = store.create(namespace(ns));
        }
        let rbac = match &config.rbac {
            Some(rbac_config) => {
                let rbac = rbac::Rbac::new(rbac_config).map_err(Error::Rbac)?;
                // The manifests' Namespaces exist from the start, as after `kubectl apply`.
                for text in &rbac_config.manifests {
                    for doc in rbac::parse_manifests(text).map_err(Error::Rbac)? {
                        if doc.get("kind").and_then(serde_json::Value::as_str) == Some("Namespace")
                        {
                            if let Some(name) = doc
                                .pointer("/metadata/name")
                                .and_then(serde_json::Value::as_str)
                            {
                                let _ = store.create(namespace(name));
                            }
                        }
                    }
                }
                Some(Arc::new(rbac))
            }
            None => None,
        };
        let logs = Arc::new(logs::Logs::new(config.log_rotate_bytes));
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let faults = Faults::new(cmd_tx);
        let cancel = CancellationToken::new();
        let behaviour = Arc::new(behaviour::Behaviour {
            kueue: config.kueue.clone(),
            ..config.behaviour.clone()
        });
        let control = tokio::spawn(controller::run(
            controller::LoopConfig {
                store: store.clone(),
                logs: logs.clone(),
                runner,
                node_capacity: config.node_capacity,
                start_delay: config.start_delay,
                log_removal_delay: config.log_removal_delay,
                restart_backoff: config.restart_backoff,
                faults: faults.clone(),
                commands: cmd_rx,
                behaviour: behaviour.clone(),
            },
            cancel.clone(),
        ));
        let app = api::router(api::AppState {
            store: store.clone(),
            logs: logs.clone(),
            faults: faults.clone(),
            shutdown: cancel.clone(),
            bookmark_interval: BOOKMARK_INTERVAL,
            rbac,
            behaviour,
        });
        let shutdown = cancel.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "kubesim server stopped");
            }
        });
        Ok(KubeSim {
            addr,
            store,
            logs,
            faults,
            cancel,
            server,
            control,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client for this simulator (default namespace `default`), as the admin (a member
    /// of `system:masters` in RBAC mode).
    pub fn client(&self) -> kube::Client {
        self.client_with_token(ADMIN_TOKEN)
    }

    /// A kube client that authenticates with `token` (e.g. a service account's, see
    /// [`rbac::RbacConfig::service_account_token`]).
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let uri: http::Uri = self.url().parse().expect("kubesim URL is a valid URI");
        let mut config = kube::Config::new(uri);
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("kube client for kubesim")
    }

    /// A kubeconfig (as [`KubeSim::kubeconfig_yaml`]) whose user presents `token`.
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        self.kubeconfig_yaml().replace(
            &format!("token: {ADMIN_TOKEN}\n"),
            &format!("token: {token}\n"),
        )
    }

    /// A kubeconfig kubectl can use (cluster, user and context named `kubesim`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    namespace: default\n    user: kubesim\ncurrent-context: kubesim\nusers:\n- name: kubesim\n  user:\n    token: kubesim\npreferences: {{}}\n",
            url = self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Preempts a pod as the default scheduler does: `DisruptionTarget` (reason
    /// `PreemptionByScheduler`), then a graceful delete (see `disruption`).
    pub fn preempt_pod(&self, namespace: &str, name: &str) -> Result<(), crate::error::Status> {
        disruption::preempt(&self.store, namespace, name)
    }

    /// Direct access to the store (for assertions that must not go through HTTP).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The raw (timestamp-free) log of a container instance, if it exists.
    pub fn container_log(&self, pod_uid: &str, container: &str, restart: i32) -> Option<Vec<u8>> {
        self.logs
            .get(&(pod_uid.to_string(), container.to_string(), restart))
            .map(|b| b.snapshot())
    }

    /// Stops the server (open watches and log streams end) and the control loop.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.control).await;
    }
}
