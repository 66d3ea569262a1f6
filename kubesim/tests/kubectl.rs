//! The real kubectl against kubesim: `create job` (protobuf body) with the host runner,
//! `wait`, `get` tables, `logs job/...`, `delete`, and `apply -f` of a parallel Job whose
//! concurrency is checked from a recorded pod watch. Skips (with a clear line) when kubectl is
//! not installed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use kubesim::{KubeSim, RunnerKind, SimConfig};
use serde_json::json;

/// The real kubectl on PATH. These tests are the proof that kubectl works against kubesim, so a
/// machine without it fails them (scripts/test installs it) rather than passing them unrun.
fn kubectl_path() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("kubectl"))
                .find(|p| p.is_file())
        })
        .expect("kubectl is not on PATH: run the tests through scripts/test, which installs it")
}

struct Kubectl {
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(sim: &KubeSim, bin: PathBuf, tag: &str) -> Kubectl {
        let dir =
            std::env::temp_dir().join(format!("kubesim-kubectl-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        sim.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
        Kubectl { bin, dir }
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .output()
            .await
            .expect("kubectl runs")
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The pi command from the Kubernetes docs, and what it prints when run directly. On this
/// development host perl 5.36's bignum was seen failing `bpi(2000)` intermittently ("Can't use
/// an undefined value as an ARRAY reference" in Math/BigInt/Calc.pm); if the docs command fails
/// here, the equivalent Math::BigFloat call is used (and said so) so the Job can complete.
fn pi_command() -> (Vec<String>, Vec<u8>) {
    let docs = ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"];
    let fallback = [
        "perl",
        "-MMath::BigFloat",
        "-wle",
        "print Math::BigFloat->bpi(2000)",
    ];
    // Each takes seconds: run both at once.
    let run = |cmd: [&'static str; 4]| {
        std::thread::spawn(move || {
            let out = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .expect("perl runs");
            (cmd, out)
        })
    };
    let (a, b) = (run(docs), run(fallback));
    for (i, h) in [a, b].into_iter().enumerate() {
        let (cmd, out) = h.join().unwrap();
        if out.status.success() && !out.stdout.is_empty() {
            return (cmd.iter().map(|s| s.to_string()).collect(), out.stdout);
        }
        if i == 0 {
            println!(
                "NOTE: `perl -Mbignum=bpi -wle 'print bpi(2000)'` failed here ({}: {}); using Math::BigFloat->bpi(2000)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    panic!("no working perl pi command on this host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_waits_lists_logs_and_deletes_a_host_run_job() {
    let bin = kubectl_path();
    let sim = sim_with(SimConfig {
        runner: RunnerKind::Host,
        ..Default::default()
    })
    .await;
    let k = Kubectl::new(&sim, bin, "pi");
    let (cmd, expected) = tokio::task::spawn_blocking(pi_command).await.unwrap();
    let mut args = vec!["create", "job", "calculatepi", "--image=perl:5.34.0", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let out = k.ok(&args).await;
    assert_eq!(out.trim(), "job.batch/calculatepi created");

    let out = k
        .ok(&[
            "wait",
            "--for=condition=complete",
            "job/calculatepi",
            "--timeout=60s",
        ])
        .await;
    assert_eq!(out.trim(), "job.batch/calculatepi condition met");

    let jobs = k.ok(&["get", "jobs"]).await;
    let header = words(jobs.lines().next().unwrap());
    assert_eq!(
        header,
        vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    );
    assert!(
        jobs.lines()
            .any(|l| words(l).starts_with(&["calculatepi", "Complete", "1/1"])),
        "{jobs}"
    );

    let pods = k.ok(&["get", "pods"]).await;
    let row = pods
        .lines()
        .find(|l| l.starts_with("calculatepi-"))
        .expect("pod row");
    let w = words(row);
    assert_eq!(w[0].len(), "calculatepi-".len() + 5, "{row}");
    assert_eq!(&w[1..3], &["0/1", "Completed"], "{pods}");

    let out = k.run(&["logs", "job/calculatepi"]).await;
    assert!(out.status.success());
    assert_eq!(
        out.stdout, expected,
        "kubectl logs differs from running the command directly"
    );

    let out = k.ok(&["delete", "job/calculatepi"]).await;
    assert_eq!(out.trim(), "job.batch \"calculatepi\" deleted");
    let out = k.run(&["get", "job", "calculatepi"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(NotFound)") && err.contains("jobs.batch \"calculatepi\" not found"),
        "{err}"
    );
    let c = sim.client();
    wait_until(&sim, "the pod is garbage collected", || async {
        job_pods(&c, "calculatepi").await.is_empty()
    })
    .await;
    let out = k.run(&["get", "pods"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found"));
    sim.shutdown().await;
}

const PARALLEL_JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: parallel
spec:
  completions: 20
  parallelism: 5
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        env:
        - name: KUBESIM_DURATION_MS
          value: "25"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_runs_twenty_completions_five_at_a_time() {
    let bin = kubectl_path();
    let sim = sim().await;
    let k = Kubectl::new(&sim, bin, "apply");
    let manifest = k.dir.join("job.yaml");
    std::fs::write(&manifest, PARALLEL_JOB).unwrap();
    // Record every pod event from before the Job exists.
    let pods = Api::<Pod>::default_namespaced(sim.client());
    let mut stream = watcher(pods, watcher::Config::default().labels("job-name=parallel")).boxed();
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(watcher::Event::Init)
    ));
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(watcher::Event::InitDone)
    ));
    let recorder = tokio::spawn(async move {
        let mut live: HashMap<String, bool> = HashMap::new();
        let mut max_active = 0;
        let mut succeeded = 0;
        while let Some(ev) = stream.try_next().await.unwrap() {
            if let watcher::Event::Apply(p) = ev {
                let ph = phase(&p);
                let name = p.metadata.name.clone().unwrap();
                let was_live = live.insert(name, !matches!(ph.as_str(), "Succeeded" | "Failed"));
                if ph == "Succeeded" && was_live != Some(false) {
                    succeeded += 1;
                }
                max_active = max_active.max(live.values().filter(|v| **v).count());
                if succeeded == 20 {
                    break;
                }
            }
        }
        (max_active, succeeded)
    });
    let out = k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "job.batch/parallel created");
    k.ok(&[
        "wait",
        "--for=condition=complete",
        "job/parallel",
        "--timeout=60s",
    ])
    .await;
    let (max_active, succeeded) = tokio::time::timeout(WAIT, recorder).await.unwrap().unwrap();
    assert_eq!(succeeded, 20);
    assert!(max_active <= 5, "saw {max_active} pods active at once");
    assert!(
        max_active >= 2,
        "the Job ran in parallel (max {max_active})"
    );
    let jobs = k.ok(&["get", "job", "parallel"]).await;
    assert!(
        jobs.lines()
            .any(|l| words(l).starts_with(&["parallel", "Complete", "20/20"])),
        "{jobs}"
    );
    let pods = k
        .ok(&["get", "pods", "-l", "job-name=parallel", "--no-headers"])
        .await;
    assert_eq!(pods.lines().filter(|l| l.contains("Completed")).count(), 20);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_namespaces_and_pods_and_runs_jobs_in_them() {
    let bin = kubectl_path();
    let sim = sim().await;
    let k = Kubectl::new(&sim, bin, "ns");
    assert_eq!(
        k.ok(&["create", "namespace", "team-a"]).await.trim(),
        "namespace/team-a created"
    );
    k.ok(&[
        "create",
        "job",
        "hello",
        "-n",
        "team-a",
        "--image=busybox",
        "--",
        "true",
    ])
    .await;
    k.ok(&[
        "wait",
        "-n",
        "team-a",
        "--for=condition=complete",
        "job/hello",
        "--timeout=30s",
    ])
    .await;
    let all = k.ok(&["get", "jobs", "-A"]).await;
    assert!(
        all.lines()
            .any(|l| words(l).starts_with(&["team-a", "hello", "Complete", "1/1"])),
        "{all}"
    );
    let out = k
        .ok(&[
            "run",
            "solo",
            "--image=busybox",
            "--restart=Never",
            "--env=KUBESIM_LOG=from kubectl run",
        ])
        .await;
    assert_eq!(out.trim(), "pod/solo created");
    k.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/solo",
        "--timeout=30s",
    ])
    .await;
    assert_eq!(k.ok(&["logs", "solo"]).await, "from kubectl run\n");
    let out = k.run(&["get", "job", "missing"]).await;
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Error from server (NotFound): jobs.batch \"missing\" not found"));
    sim.shutdown().await;
}

/// `kubectl get events` (server-side Table, pkg/printers/internalversion/printers.go) and
/// `kubectl describe job` (Events by involvedObject field selectors) show the Job controller's
/// FailedCreate from Pod Security admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_events_and_describe_job_show_a_failed_create() {
    let bin = kubectl_path();
    let sim = sim().await;
    let k = Kubectl::new(&sim, bin, "events");
    k.ok(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    k.ok(&["create", "job", "rooty", "--image=busybox"]).await;
    let c = sim.client();
    wait_until(&sim, "a FailedCreate Event", || {
        let c = c.clone();
        async move {
            Api::<k8s_openapi::api::core::v1::Event>::default_namespaced(c)
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedCreate"))
        }
    })
    .await;
    let events = k.ok(&["get", "events"]).await;
    let header = words(events.lines().next().unwrap());
    assert_eq!(
        header,
        vec!["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        events.lines().any(|l| {
            let w = words(l);
            w.contains(&"Warning") && w.contains(&"FailedCreate") && w.contains(&"job/rooty")
        }),
        "{events}"
    );
    let described = k.ok(&["describe", "job", "rooty"]).await;
    assert!(
        described.contains("FailedCreate") && described.contains("violates PodSecurity"),
        "{described}"
    );
}

/// With the Kueue switch on, `kubectl get workloads` lists the Workload of a queued Job with the
/// CRD's columns (https://kueue.sigs.k8s.io/docs/tasks/troubleshooting/troubleshooting_jobs/:
/// `NAME QUEUE RESERVED IN ADMITTED AGE`), and an external admitter's
/// `kubectl patch workload --subresource=status` writing `Admitted` True runs the Job.
#[tokio::test]
async fn kubectl_lists_workloads_and_a_status_patch_admits_one() {
    let bin = kubectl_path();
    let sim = sim_with(SimConfig {
        kueue: Some(kubesim::kueue::KueueConfig::default()),
        ..SimConfig::default()
    })
    .await;
    let c = sim.client();
    let mut j = job("queued", &[]);
    j.metadata.labels = Some(
        [(
            "kueue.x-k8s.io/queue-name".to_string(),
            "team-a".to_string(),
        )]
        .into(),
    );
    let created = create_job(&c, &j).await;
    let wl = kubesim::kueue::workload_name("queued", created.metadata.uid.as_deref().unwrap());
    wait_obj(
        Api::<kubesim::kueue::Workload>::default_namespaced(c.clone()),
        &wl,
        |_| true,
    )
    .await;
    let k = Kubectl::new(&sim, bin, "kueue");
    let listed = k.ok(&["get", "workloads"]).await;
    let mut lines = listed.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        vec!["NAME", "QUEUE", "RESERVED", "IN", "ADMITTED", "AGE"]
    );
    let row = words(lines.next().unwrap());
    assert_eq!(&row[..2], &[wl.as_str(), "team-a"], "{listed}");
    let patch = json!({"status": {"conditions": [{
        "type": "Admitted", "status": "True", "reason": "Admitted",
        "message": "The workload is admitted", "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]}})
    .to_string();
    k.ok(&[
        "patch",
        "workload",
        &wl,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])
    .await;
    assert!(has_condition(
        &wait_finished(&c, "queued").await,
        "Complete"
    ));
    let listed = k.ok(&["get", "workloads"]).await;
    assert!(
        words(listed.lines().nth(1).unwrap()).contains(&"True"),
        "{listed}"
    );
    sim.shutdown().await;
}

/// `kubectl create secret generic --from-literal` (a protobuf body, as kubectl's typed client
/// sends it), `kubectl get secrets` (Table: NAME TYPE DATA AGE, printers.go
/// `secretColumnDefinitions`), the stored value base64-encoded under `.data`, and
/// `kubectl create configmap` / `get configmaps` / `delete secret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_gets_and_deletes_secrets_and_config_maps() {
    let bin = kubectl_path();
    let sim = common::sim().await;
    let k = Kubectl::new(&sim, bin, "secrets");
    k.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=hunter2",
        "--from-literal=user=admin",
    ])
    .await;
    let listed = k.ok(&["get", "secrets"]).await;
    let mut lines = listed.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        vec!["NAME", "TYPE", "DATA", "AGE"]
    );
    assert_eq!(&words(lines.next().unwrap())[..3], &["db", "Opaque", "2"]);
    let encoded = k
        .ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])
        .await;
    assert_eq!(encoded, "aHVudGVyMg==");
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=LEVEL=debug",
    ])
    .await;
    let listed = k.ok(&["get", "configmaps"]).await;
    assert_eq!(
        &words(listed.lines().nth(1).unwrap())[..2],
        &["settings", "1"],
        "{listed}"
    );
    k.ok(&["delete", "secret", "db"]).await;
    let after = k.run(&["get", "secret", "db"]).await;
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("NotFound"));
    sim.shutdown().await;
}
