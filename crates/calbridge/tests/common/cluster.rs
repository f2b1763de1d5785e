//! Plumbing of the cluster tests: a database of their own on a PostgreSQL server, a PostgreSQL
//! server of their own (to restart it), `calbridge run` processes, and a load balancer in front
//! of them (the `public_url` Graph posts its notifications to).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m365_emulator::ReadyInfo;

use super::postgres::services_required;

/// Where the PostgreSQL 15 server programs are (Debian's layout), overridable with
/// `CALBRIDGE_TEST_POSTGRES_BIN`.
fn postgres_bin() -> PathBuf {
    std::env::var_os("CALBRIDGE_TEST_POSTGRES_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A PostgreSQL server of the test's own, in a temporary folder on a free port, so that the
/// test can stop and start it. PostgreSQL refuses to run as root: as root, its programs run
/// as the `postgres` user. Stopped and removed when dropped, also when the test fails.
pub struct OwnPostgres {
    data: tempfile::TempDir,
    pub port: u16,
    as_root: bool,
}

impl OwnPostgres {
    /// `None` (the test skips) when the server programs are missing, unless
    /// `CALBRIDGE_REQUIRE_SERVICES=1`.
    pub fn start() -> Option<OwnPostgres> {
        let bin = postgres_bin();
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            assert!(
                !services_required(),
                "CALBRIDGE_REQUIRE_SERVICES=1 but there is no initdb/pg_ctl in {}",
                bin.display()
            );
            eprintln!(
                "skipped: no PostgreSQL server programs in {} (set CALBRIDGE_TEST_POSTGRES_BIN)",
                bin.display()
            );
            return None;
        }
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
        let data = tempfile::Builder::new()
            .prefix("calbridge-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL");
        if as_root {
            let owned = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(data.path())
                .status()
                .expect("chown runs");
            assert!(owned.success(), "chown the data folder to postgres");
        }
        let server = OwnPostgres {
            data,
            port: free_port(),
            as_root,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.cluster_dir(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.pg_ctl_start();
        Some(server)
    }

    fn cluster_dir(&self) -> String {
        self.data.path().join("data").display().to_string()
    }

    fn log_file(&self) -> String {
        self.data.path().join("server.log").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the server programs (as `postgres` when the test is root) and asserts that
    /// it succeeded.
    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program, args).output().expect("runs");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        );
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let path = postgres_bin().join(program);
        let mut command = if self.as_root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        };
        command.args(args);
        command
    }

    /// Starts the server and waits until it accepts connections.
    pub fn pg_ctl_start(&self) {
        // The socket goes into the data folder: /var/run/postgresql may not be ours.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.cluster_dir(),
                "-l",
                &self.log_file(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server at once (connections are cut, as a crash or a failover would).
    pub fn pg_ctl_stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.cluster_dir(), "-m", "fast", "-w", "stop"],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command(
                "pg_ctl",
                &["-D", &self.cluster_dir(), "-m", "immediate", "-w", "stop"],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A free loopback port (bound and let go: another process could take it meanwhile, which
/// the test would report as a start failure).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A `calbridge run` process, killed (SIGKILL) when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub name: String,
    pub address: String,
    pub log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn start(name: &str, config: &Path, address: String, log: PathBuf) -> Process {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("calbridge runs");
        Process {
            child,
            name: name.to_string(),
            address,
            log,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "last lines of {}'s log:\n{}",
            self.name,
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    pub async fn get(&self, http: &reqwest::Client, path: &str) -> Option<serde_json::Value> {
        http.get(format!("http://{}{path}", self.address))
            .bearer_auth("cluster-test-token")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Waits until the API answers (the store is open, the first lease round done).
    pub async fn wait_answering(&self, http: &reqwest::Client, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.get(http, "/api/v1/status").await.is_none() {
            assert!(
                Instant::now() < deadline,
                "{} does not answer: {}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A graceful stop, as a service manager does it: SIGTERM, then waits for the exit.
    /// Returns how the process ended.
    pub async fn terminate(&mut self, patience: Duration) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {patience:?} of SIGTERM: {}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The configuration of one `calbridge run` process of a cluster test: the emulator's Graph
/// source and group, the shared store, `[cluster]`, and the API on `port` with Graph's
/// notifications going to `public_url` (a load balancer in front of every instance).
pub struct ProcessConfig<'a> {
    pub name: &'a str,
    pub port: u16,
    pub public_url: &'a str,
    pub store_url: &'a str,
    pub key_file: &'a Path,
    pub lease_seconds: u64,
    pub ready: &'a ReadyInfo,
    /// A SIP presence server (`host:port`) to publish to, domain `pbx.test`.
    pub sip_server: Option<&'a str>,
}

impl ProcessConfig<'_> {
    pub fn to_toml(&self) -> String {
        let ready = self.ready;
        let sip = self
            .sip_server
            .map(|server| {
                format!(
                    "\n[publish.sip]\nserver = \"{server}\"\ndomain = \"pbx.test\"\nmax_requests_per_second = 1000\n"
                )
            })
            .unwrap_or_default();
        format!(
            r#"[presence]
timezone = "UTC"

[store]
url = "{url}"
key_file = "{key}"

[cluster]
lease_seconds = {lease}
instance_name = "{name}"

[api]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
token = "cluster-test-token"
{sip}
[[sources]]
id = "demo"

[sources.graph]
tenant_id = "{tenant}"
client_id = "{client}"
credential = {{ client_secret = "{secret}" }}
authority_url = "{base}"
graph_url = "{base}"
token_scope = "https://graph.microsoft.com/.default"
extra_root_ca = "{ca}"

[[directory]]
source = "demo"
group_id = "{group}"
"#,
            url = self.store_url,
            key = self.key_file.display(),
            lease = self.lease_seconds,
            name = self.name,
            port = self.port,
            public_url = self.public_url,
            tenant = ready.tenant_id,
            client = ready.client_id,
            secret = ready.client_secret.as_deref().expect("a secret"),
            base = ready.base_url,
            ca = ready.ca_cert.display(),
            group = ready.group_id.as_deref().expect("a group"),
        )
    }
}

/// A TCP load balancer on a loopback port: each connection goes to the next instance that
/// accepts it, round robin. An instance taken out (drained before a restart, as a real load
/// balancer's health check would) gets no new connections; one that is gone is skipped.
#[derive(Clone)]
pub struct Balancer {
    pub url: String,
    backends: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Balancer {
    pub async fn start() -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the balancer");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let backends: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let shared = backends.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let addresses: Vec<String> =
                    shared.lock().expect("lock").values().cloned().collect();
                next = next.wrapping_add(1);
                tokio::spawn(async move {
                    for offset in 0..addresses.len() {
                        let address = &addresses[(next + offset) % addresses.len()];
                        let connected = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect(address),
                        )
                        .await;
                        if let Ok(Ok(mut outbound)) = connected {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { url, backends }
    }

    /// Sends new connections to `address` too, under `name`.
    pub fn add(&self, name: &str, address: &str) {
        self.backends
            .lock()
            .expect("lock")
            .insert(name.to_string(), address.to_string());
    }

    /// Sends no new connections to `name`.
    pub fn remove(&self, name: &str) {
        self.backends.lock().expect("lock").remove(name);
    }

    /// Sends every new connection to `name` alone, until the others are added again.
    pub fn only(&self, name: &str) {
        self.backends
            .lock()
            .expect("lock")
            .retain(|backend, _| backend == name);
    }
}

/// In-process instances named `names` on the database of `store_url`, sharing one store key in
/// `dir`, each posting every presence change to the webhook `hook_url` (HMAC key
/// `hook_secret`), on the real clock.
pub async fn start_instances(
    names: &[&str],
    ready: &ReadyInfo,
    dir: &Path,
    store_url: &str,
    lease_seconds: u64,
    hook_url: &str,
    hook_secret: &str,
) -> Vec<(String, calbridge::service::RunningService)> {
    let mut instances = Vec::new();
    for name in names {
        let (listener, public_url) = super::listen(0).await;
        let mut config = super::config_for(ready, dir, &public_url, None);
        config.store.path = None;
        config.store.key_file = Some(dir.join("calbridge.key"));
        config.store.url = Some(calbridge_domain::Secret::new(store_url.to_string()));
        config.cluster.lease_seconds = lease_seconds;
        config.cluster.instance_name = Some(name.to_string());
        config.publish.webhooks = vec![toml::from_str(&format!(
            "name = \"crm\"\nurl = \"{hook_url}\"\nsecret = \"{hook_secret}\"\n"
        ))
        .expect("webhook config")];
        instances.push((
            name.to_string(),
            super::start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await,
        ));
    }
    instances
}
