//! `docker/stack.yaml` deployed with `docker stack deploy` on a single-node swarm: the
//! secrets made, the stack up, a task imported and predicted through its nginx,
//! a rolling `docker service update` under load with no failed request (the client
//! retries 429, 502 and 503 as the README advises), then the stack, its volume, the
//! secrets and the swarm removed.
//!
//! Skipped where this machine is already in a swarm: the test makes its own and leaves
//! it, and never touches one it did not make.

use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{begin, import_and_predict, must, stream, Client, ADMIN_KEY, IMAGE};
use crate::common::{free_port, repo_dir};

/// The stack's name; its services are `{STACK}_postgres` and `{STACK}_exemplar`.
const STACK: &str = "exemplar-swarm-test";
/// Examples imported through nginx.
const EXAMPLES: usize = 200;
/// Requests at least in the stream under which the replicas are updated.
const UPDATE_STREAM: usize = 150;
/// The database password the test gives as a secret.
const DB_PASSWORD: &str = "swarm-test-database-password";

/// Runs `docker ARGS`, answering its output.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

/// Runs `docker ARGS`, answering its standard output; fails the test if it fails.
fn docker_must(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Makes a Docker secret from `value`.
fn create_secret(name: &str, value: &str) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["secret", "create", name, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("secret written");
    assert!(
        child.wait().expect("docker ends").success(),
        "secret {name}"
    );
}

/// A single-node swarm made by the test with the stack deployed on it; removed with
/// everything the test made when dropped.
struct Swarm {
    port: u16,
}

impl Swarm {
    /// Makes the swarm, labels its node for PostgreSQL, makes the secrets and deploys
    /// the stack; `None` where this machine already belongs to a swarm.
    fn deploy(port: u16) -> Option<Self> {
        let state = docker_must(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state != "inactive" {
            return None;
        }
        // On the address Docker picks (the default route's): overlay networks do not
        // carry traffic between containers on a loopback-advertised node.
        docker_must(&["swarm", "init"]);
        let swarm = Self { port };
        let node = docker_must(&["info", "--format", "{{.Swarm.NodeID}}"]);
        docker_must(&["node", "update", "--label-add", "exemplar.db=true", &node]);
        create_secret("exemplar_bootstrap_key", ADMIN_KEY);
        create_secret("exemplar_db_password", DB_PASSWORD);
        let file = repo_dir().join("docker/stack.yaml");
        must(
            Command::new("docker")
                .args(["stack", "deploy", "--resolve-image", "never", "-c"])
                .arg(&file)
                .arg(STACK)
                .env("EXEMPLAR_IMAGE", IMAGE)
                .env("EXEMPLAR_PORT", port.to_string()),
        );
        Some(swarm)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The replicas' service as `docker service` names it.
    fn replicas_service() -> String {
        format!("{STACK}_exemplar")
    }

    /// Waits until the three replicas run and pass their health check.
    fn wait_replicas_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let healthy = docker_must(&[
                "ps",
                "--filter",
                &format!(
                    "label=com.docker.swarm.service.name={}",
                    Self::replicas_service()
                ),
                "--filter",
                "health=healthy",
                "--quiet",
            ]);
            if healthy.lines().count() >= 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas are not healthy after 300 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The last lines the replicas logged, and the service's tasks.
    fn logs(&self) -> String {
        let service = Self::replicas_service();
        let tasks = docker(&["service", "ps", "--no-trunc", &service]);
        let logs = docker(&["service", "logs", "--tail", "30", &service]);
        format!(
            "{}{}{}",
            String::from_utf8_lossy(&tasks.stdout),
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        )
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = docker(&["stack", "rm", STACK]);
        // The volume can go only once the stack's containers have.
        let deadline = Instant::now() + Duration::from_secs(120);
        let label = format!("label=com.docker.stack.namespace={STACK}");
        while !docker(&["ps", "-aq", "--filter", &label]).stdout.is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = docker(&["volume", "rm", &format!("{STACK}_pgdata")]);
        let _ = docker(&[
            "secret",
            "rm",
            "exemplar_bootstrap_key",
            "exemplar_db_password",
        ]);
        let _ = docker(&["swarm", "leave", "--force"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "builds Docker images and runs a swarm stack (minutes); run with --include-ignored"]
async fn the_swarm_stack_deploys_serves_and_updates_replicas_one_at_a_time_under_load() {
    let Some((_turn, started)) = begin().await else {
        return;
    };
    let Some(swarm) = Swarm::deploy(free_port()) else {
        eprintln!("skipped: this machine is in a swarm already, which the test leaves alone");
        return;
    };
    swarm.wait_replicas_healthy();
    eprintln!(
        "stack deployed and healthy at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let client = Client::new();
    let anonymous = client_without_key(&swarm).await;
    assert_eq!(anonymous, 401, "the stack served a request without a key");

    let queries = import_and_predict(&swarm.url(""), &client, EXAMPLES, || swarm.logs()).await;
    eprintln!(
        "imported and predicted at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let failures = stream(&swarm.url(""), &client, UPDATE_STREAM, &queries, || {
        docker_must(&[
            "service",
            "update",
            "--force",
            "--detach=false",
            "--quiet",
            &Swarm::replicas_service(),
        ]);
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}\n{}", swarm.logs());
    let tasks = docker_must(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Name}} {{.CurrentState}}",
        &Swarm::replicas_service(),
    ]);
    assert_eq!(tasks.lines().count(), 3, "{tasks}");
    eprintln!(
        "rolling update under {UPDATE_STREAM} requests: 0 failed, {} retried; whole swarm test {:.0} s",
        client.retried.swap(0, Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// The status of a request without a key.
async fn client_without_key(swarm: &Swarm) -> u16 {
    reqwest::get(swarm.url("/v1/tasks"))
        .await
        .expect("sent")
        .status()
        .as_u16()
}
