//! The control API end to end: the real server and client on a Unix socket, in front of a fake handler with canned answers that records every call.
//!
//! Each test binds its own socket under a fresh temporary directory, removed
//! by a guard. Only `another_user_is_refused` needs root (it runs a client as
//! `nobody`); without root it prints a note and passes.

use std::{
    io,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use failoverd::control::{
    client::{ClientError, ControlClient},
    server::{self, ServerError},
    BackendReport, Caller, ControlError, ControlHandler, DrainReport, DrainRequest, EventRecord,
    EventsReport, ExplainReport, FailbackRequest, OutBackend, ProbeReport, ReachableBackend,
    ReloadReport, ServiceReport, StatusReport, TerminatedReport, UndrainRequest,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::watch,
    task::JoinHandle,
};

/// How long a raw exchange may take before the test calls it hung (real time, far above need).
const EXCHANGE_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- fixtures

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// `temp_dir()/fo-ctl-<pid>-<n>`, removed with everything in it on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fo-ctl-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TestDir(path)
    }

    /// The socket path: in a subdirectory, so that `bind` creates that directory.
    fn socket(&self) -> PathBuf {
        self.0.join("run").join("ctl.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// One call the handler saw.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Status,
    Drain(Caller, DrainRequest),
    Undrain(Caller, UndrainRequest),
    Failback(Caller, FailbackRequest),
    Reload(Caller),
    Explain(String, Option<String>),
    Events(u64, bool),
}

/// Canned answers, every call recorded; `fail` makes every call fail with that error.
#[derive(Default)]
struct FakeHandler {
    calls: Mutex<Vec<Call>>,
    fail: Mutex<Option<ControlError>>,
}

impl FakeHandler {
    fn record(&self, call: Call) -> Result<(), ControlError> {
        self.calls.lock().expect("calls lock").push(call);
        match self.fail.lock().expect("fail lock").clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    fn fail_with(&self, e: Option<ControlError>) {
        *self.fail.lock().expect("fail lock") = e;
    }
}

impl ControlHandler for FakeHandler {
    async fn status(&self) -> Result<StatusReport, ControlError> {
        self.record(Call::Status)?;
        Ok(status_fixture())
    }

    async fn drain(
        &self,
        caller: Caller,
        request: DrainRequest,
    ) -> Result<DrainReport, ControlError> {
        // A terminate reports what it aborted; a plain drain has nothing to report.
        let terminated = request
            .terminate
            .then_some(TerminatedReport { tcp: 3, udp: 1 });
        self.record(Call::Drain(caller, request))
            .map(|()| DrainReport { terminated })
    }

    async fn undrain(&self, caller: Caller, request: UndrainRequest) -> Result<(), ControlError> {
        self.record(Call::Undrain(caller, request))
    }

    async fn failback(&self, caller: Caller, request: FailbackRequest) -> Result<(), ControlError> {
        self.record(Call::Failback(caller, request))
    }

    async fn reload(&self, caller: Caller) -> Result<ReloadReport, ControlError> {
        self.record(Call::Reload(caller))?;
        Ok(ReloadReport {
            added: vec!["payments".into()],
            removed: vec![],
            changed: vec!["orders-db".into()],
            unchanged: vec!["cache".into()],
        })
    }

    async fn events(&self, after: u64, wait: bool) -> Result<EventsReport, ControlError> {
        self.record(Call::Events(after, wait))?;
        Ok(EventsReport {
            events: vec![EventRecord {
                seq: after + 1,
                at_unix_ms: 1_700_000_000_000,
                kind: "failover".into(),
                service: "orders-db".into(),
                backend: None,
                from: Some("0".into()),
                to: Some("1".into()),
                detail: "out: db-a unhealthy".into(),
            }],
            next: after + 1,
        })
    }

    async fn explain(
        &self,
        vip: String,
        protocol: Option<String>,
    ) -> Result<ExplainReport, ControlError> {
        self.record(Call::Explain(vip.clone(), protocol))?;
        Ok(ExplainReport {
            datapath_error: None,
            vip,
            service: "orders-db".into(),
            active_priority: Some(0),
            refused: false,
            panic: false,
            reachable: vec![ReachableBackend {
                name: "db-a".into(),
                address: "10.0.0.5:5432".into(),
                share_percent: 100.0,
            }],
            out: vec![OutBackend {
                name: "db-b".into(),
                address: "10.0.0.6:5432".into(),
                reason: "drained by alice: maintenance".into(),
            }],
        })
    }
}

fn status_fixture() -> StatusReport {
    StatusReport {
        version: "0.1.0".into(),
        fleet: None,
        services: vec![ServiceReport {
            name: "orders-db".into(),
            vip: "10.96.0.10:5432".into(),
            protocol: "tcp".into(),
            active_priority: Some(0),
            ready: true,
            panic: false,
            split_brain: Vec::new(),
            datapath_error: None,
            on_all_down: "reject".into(),
            failback: "auto".into(),
            backends: vec![BackendReport {
                name: "db-a".into(),
                address: "10.0.0.5:5432".into(),
                state: "healthy".into(),
                weight: 100,
                priority: 0,
                in_table: true,
                last_probe: Some(ProbeReport {
                    ok: true,
                    detail: "connected".into(),
                    latency_ms: 1.5,
                }),
                in_state_seconds: 12.5,
                ejections: 0,
                kernel_connects: 42,
                drain: None,
                passive: None,
                kernel_outcomes: None,
            }],
        }],
    }
}

/// A running server on its own socket; shut down when dropped.
struct Server {
    dir: TestDir,
    path: PathBuf,
    handler: Arc<FakeHandler>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start() -> Server {
        let dir = TestDir::new();
        let path = dir.socket();
        let listener = server::bind(&path).unwrap_or_else(|e| panic!("bind: {e}"));
        let handler = Arc::new(FakeHandler::default());
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, Arc::clone(&handler), stop));
        Server {
            dir,
            path,
            handler,
            shutdown,
            task: Some(task),
        }
    }

    fn client(&self) -> ControlClient {
        ControlClient::new(&self.path)
    }

    /// Asks `serve` to stop and hands back its task.
    fn stop(&mut self) -> JoinHandle<()> {
        self.shutdown.send_replace(true);
        self.task.take().expect("the server runs")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A raw HTTP answer.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The `error` of the JSON ErrorBody.
    fn error(&self) -> String {
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {self:?}"));
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {self:?}"))
            .to_owned()
    }
}

/// Writes `request` as is and reads until the server closes; `None` when it closed without answering.
async fn raw(path: &Path, request: &[u8]) -> Option<Raw> {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    let exchange = async {
        // The server may answer and close before it has read everything (413):
        // a write cut short by that is part of the behaviour under test.
        match stream.write_all(request).await {
            Err(e)
                if !matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                panic!("write: {e}")
            }
            _ => {}
        }
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer).await {
            Err(e) if e.kind() != io::ErrorKind::ConnectionReset => panic!("read: {e}"),
            _ => answer,
        }
    };
    let answer = tokio::time::timeout(EXCHANGE_LIMIT, exchange)
        .await
        .expect("the server neither answered nor closed");
    parse_raw(&answer)
}

fn parse_raw(answer: &[u8]) -> Option<Raw> {
    if answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    Some(Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A one-request HTTP/1.1 message that asks the server to close after answering.
fn request(method: &str, target: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The name of the user running the tests, as the server should report it.
fn current_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("running id -un");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn me() -> Caller {
    Caller {
        user: current_user(),
        pid: std::process::id() as i32,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

// ---------------------------------------------------------------- round trips

#[tokio::test]
async fn status_round_trips_through_the_client() {
    let server = Server::start().await;
    let report = server.client().status().await.unwrap();
    assert_eq!(report, status_fixture());
    assert_eq!(server.handler.calls(), [Call::Status]);
}

#[tokio::test]
async fn drain_reaches_the_handler_with_the_request_and_the_caller() {
    let server = Server::start().await;
    let request = DrainRequest {
        service: "orders-db".into(),
        backend: "db-a".into(),
        reason: Some("kernel upgrade".into()),
        force: true,
        fleet: false,
        terminate: false,
    };
    let report = server.client().drain(&request).await.unwrap();
    assert_eq!(
        report,
        DrainReport::default(),
        "a plain drain: 204, no body"
    );
    assert_eq!(server.handler.calls(), [Call::Drain(me(), request)]);
}

#[tokio::test]
async fn drain_terminate_answers_what_was_aborted() {
    let server = Server::start().await;
    let request = DrainRequest {
        service: "orders-db".into(),
        backend: "db-a".into(),
        reason: None,
        force: false,
        terminate: true,
        fleet: false,
    };
    let report = server.client().drain(&request).await.unwrap();
    assert_eq!(report.terminated, Some(TerminatedReport { tcp: 3, udp: 1 }));
    // An older client's body (no `terminate`) is a plain drain.
    let old: DrainRequest =
        serde_json::from_str(r#"{"service": "s", "backend": "b", "force": false}"#).unwrap();
    assert!(!old.terminate);
}

#[tokio::test]
async fn undrain_failback_and_reload_reach_the_handler() {
    let server = Server::start().await;
    let client = server.client();
    let undrain = UndrainRequest {
        service: "orders-db".into(),
        backend: "db-a".into(),
        fleet: false,
    };
    let failback = FailbackRequest {
        service: "orders-db".into(),
    };
    client.undrain(&undrain).await.unwrap();
    client.failback(&failback).await.unwrap();
    let report = client.reload().await.unwrap();
    assert_eq!(report.added, ["payments"]);
    assert_eq!(report.changed, ["orders-db"]);
    assert_eq!(
        server.handler.calls(),
        [
            Call::Undrain(me(), undrain),
            Call::Failback(me(), failback),
            Call::Reload(me()),
        ]
    );
}

#[tokio::test]
async fn events_pass_after_and_wait_through() {
    let server = Server::start().await;
    let report = server.client().events(41, true).await.unwrap();
    assert_eq!((report.next, report.events[0].seq), (42, 42));
    assert_eq!(report.events[0].kind, "failover");
    assert_eq!(server.handler.calls(), [Call::Events(41, true)]);
}

#[tokio::test]
async fn explain_passes_an_ipv6_vip_and_the_protocol_through() {
    let server = Server::start().await;
    let report = server
        .client()
        .explain("[::1]:80", Some("udp"))
        .await
        .unwrap();
    assert_eq!(report.vip, "[::1]:80");
    assert_eq!(report.reachable[0].share_percent, 100.0);
    server
        .client()
        .explain("10.96.0.10:5432", None)
        .await
        .unwrap();
    assert_eq!(
        server.handler.calls(),
        [
            Call::Explain("[::1]:80".into(), Some("udp".into())),
            Call::Explain("10.96.0.10:5432".into(), None),
        ]
    );
}

#[tokio::test]
async fn explain_decodes_the_query() {
    let server = Server::start().await;
    let encoded = raw(
        &server.path,
        &request("GET", "/v1/explain?vip=%5B%3A%3A1%5D%3A80&protocol=udp", ""),
    )
    .await
    .unwrap();
    assert_eq!(encoded.status, 200, "{encoded:?}");
    let plain = raw(
        &server.path,
        &request("GET", "/v1/explain?vip=[::1]:80", ""),
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(
        server.handler.calls(),
        [
            Call::Explain("[::1]:80".into(), Some("udp".into())),
            Call::Explain("[::1]:80".into(), None),
        ]
    );
}

#[tokio::test]
async fn explain_without_a_vip_is_a_400() {
    let server = Server::start().await;
    let answer = raw(
        &server.path,
        &request("GET", "/v1/explain?protocol=udp", ""),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().contains("missing query parameter `vip`"),
        "{answer:?}"
    );
    assert!(server.handler.calls().is_empty());
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn handler_errors_map_to_statuses_and_reach_the_client_verbatim() {
    let server = Server::start().await;
    let request = DrainRequest {
        service: "orders-db".into(),
        backend: "db-z".into(),
        reason: None,
        force: false,
        fleet: false,
        terminate: false,
    };
    let cases = [
        (
            ControlError::NotFound("service orders-db has no backend db-z".into()),
            404,
        ),
        (
            ControlError::Invalid("db-a is the last live backend of orders-db; use --force".into()),
            400,
        ),
        (
            ControlError::BadConfig(
                "/etc/failoverd/failoverd.yaml:3:9: services[0].vip: `x` is not ip:port".into(),
            ),
            422,
        ),
        (
            ControlError::Failed("persisting the drain: disk full".into()),
            500,
        ),
    ];
    for (error, status) in cases {
        let message = error.to_string();
        server.handler.fail_with(Some(error));
        let drained = server.client().drain(&request).await.unwrap_err();
        let reloaded = server.client().reload().await.unwrap_err();
        for e in [drained, reloaded] {
            assert!(
                matches!(&e, ClientError::Server { status: s, message: m } if *s == status && *m == message),
                "{e:?}"
            );
            assert_eq!(e.to_string(), message);
        }
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let server = Server::start().await;
    let answer = raw(
        &server.path,
        &request("POST", "/v1/drain", r#"{"service": "#),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let error = answer.error();
    assert!(
        error.starts_with("invalid request body for POST /v1/drain: "),
        "{error}"
    );
    assert!(error.contains("line 1 column"), "{error}");
    assert!(server.handler.calls().is_empty());
}

#[tokio::test]
async fn a_missing_field_is_a_400_naming_the_field() {
    let server = Server::start().await;
    let answer = raw(
        &server.path,
        &request("POST", "/v1/undrain", r#"{"service": "orders-db"}"#),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().contains("missing field `backend`"),
        "{answer:?}"
    );
    assert!(server.handler.calls().is_empty());
}

#[tokio::test]
async fn a_body_over_64_kib_is_a_413() {
    let server = Server::start().await;
    let big = format!(
        r#"{{"service": "{}", "backend": "b"}}"#,
        "x".repeat(100_000)
    );
    let declared = raw(&server.path, &request("POST", "/v1/drain", &big))
        .await
        .unwrap();
    assert_eq!(declared.status, 413, "{declared:?}");
    assert!(
        declared.error().contains("larger than 65536 bytes"),
        "{declared:?}"
    );
    // Chunked: no length up front, so the cap hits while reading.
    let mut chunked = b"POST /v1/drain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = raw(&server.path, &chunked).await.unwrap();
    assert_eq!(streamed.status, 413, "{streamed:?}");
    assert!(server.handler.calls().is_empty());
}

#[tokio::test]
async fn an_unknown_path_is_a_404() {
    let server = Server::start().await;
    let answer = raw(&server.path, &request("GET", "/v2/status", ""))
        .await
        .unwrap();
    assert_eq!(answer.status, 404);
    assert!(
        answer.error().contains("no route `/v2/status`"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_wrong_method_is_a_405_with_allow() {
    let server = Server::start().await;
    let get = raw(&server.path, &request("GET", "/v1/drain", ""))
        .await
        .unwrap();
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    let post = raw(&server.path, &request("POST", "/v1/status", "{}"))
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
    assert!(post.error().contains("use GET /v1/status"), "{post:?}");
    assert!(server.handler.calls().is_empty());
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_the_server() {
    let server = Server::start().await;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    if let Some(answer) = raw(&server.path, &garbage).await {
        assert_eq!(answer.status, 400, "{answer:?}");
    }
    let not_http = raw(&server.path, b"HELLO failoverd\r\n\r\n").await;
    assert!(
        not_http.as_ref().is_none_or(|a| a.status == 400),
        "{not_http:?}"
    );
    assert_eq!(server.client().status().await.unwrap(), status_fixture());
}

// ---------------------------------------------------------------- the socket

#[tokio::test]
async fn the_socket_is_0600_in_a_0750_directory() {
    let server = Server::start().await;
    assert_eq!(mode(&server.path), 0o600);
    assert_eq!(mode(server.path.parent().unwrap()), 0o750);
}

#[tokio::test]
async fn an_existing_directory_keeps_its_mode() {
    let dir = TestDir::new();
    let run = dir.0.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _listener = server::bind(&dir.socket()).unwrap();
    assert_eq!(mode(&run), 0o755);
    assert_eq!(mode(&dir.socket()), 0o600);
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.0.join("run")).unwrap();
    // A socket file nobody listens on: what a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let listener = server::bind(&dir.socket()).unwrap_or_else(|e| panic!("{e}"));
    let (_stop, stop) = watch::channel(false);
    tokio::spawn(server::serve(
        listener,
        Arc::new(FakeHandler::default()),
        stop,
    ));
    ControlClient::new(dir.socket()).status().await.unwrap();
}

#[tokio::test]
async fn a_live_socket_makes_bind_fail_and_keeps_serving() {
    let server = Server::start().await;
    let e = server::bind(&server.path).unwrap_err();
    assert!(matches!(e, ServerError::AlreadyRunning { .. }), "{e:?}");
    assert!(
        e.to_string().contains("another failoverd is running"),
        "{e}"
    );
    server.client().status().await.unwrap();
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.0.join("run")).unwrap();
    std::fs::write(dir.socket(), "precious").unwrap();
    let e = server::bind(&dir.socket()).unwrap_err();
    assert!(matches!(e, ServerError::NotASocket { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(dir.socket()).unwrap(), "precious");
}

#[tokio::test]
async fn a_missing_socket_says_whether_failoverd_runs() {
    let dir = TestDir::new();
    let e = ControlClient::new(dir.socket()).status().await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("is failoverd running?"), "{e}");
}

// ---------------------------------------------------------------- other users

/// Set for the child that `another_user_is_refused` runs as `nobody`.
const CHILD_SOCKET: &str = "FAILOVERD_TEST_CONTROL_SOCKET";
const NOBODY: u32 = 65534;

/// Not a test on its own: `another_user_is_refused` runs this binary again
/// as `nobody` with only this function selected, and reads what it prints.
#[tokio::test]
#[ignore = "helper that another_user_is_refused runs as uid 65534"]
async fn helper_ask_for_status() {
    let Some(path) = std::env::var_os(CHILD_SOCKET) else {
        println!("note: nothing to do unless {CHILD_SOCKET} names a socket");
        return;
    };
    let outcome = match ControlClient::new(path).status().await {
        Ok(_) => "ok".to_owned(),
        Err(ClientError::Connect { path, source }) => {
            let kind = source.kind();
            format!(
                "connect {kind:?}: {}",
                ClientError::Connect { path, source }
            )
        }
        Err(ClientError::Server { status, message }) => format!("server {status}: {message}"),
        Err(e) => format!("other: {e}"),
    };
    println!("OUTCOME {outcome}");
}

/// Runs [`helper_ask_for_status`] as `nobody` against `socket` and returns its outcome line.
async fn status_as_nobody(socket: &Path) -> String {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--exact",
            "helper_ask_for_status",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET, socket)
        .stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (setgroups, setgid, setuid), no allocation.
    unsafe {
        command.pre_exec(|| {
            // Groups first, then the gid, then the uid: after setuid there is no going back.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("running the test binary as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        // libtest prints `test helper_ask_for_status ... ` on the same line first.
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no outcome ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("note: skipping another_user_is_refused: it needs root to run a client as nobody");
        return;
    }
    let server = Server::start().await;
    // The temporary directory must be traversable for nobody to reach the socket at all.
    std::fs::set_permissions(&server.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();

    // As bound: the 0750 directory keeps nobody out.
    let outcome = status_as_nobody(&server.path).await;
    assert!(
        outcome.starts_with("connect PermissionDenied: "),
        "{outcome}"
    );
    assert!(outcome.contains("run this as root"), "{outcome}");

    // With the directory opened, the 0600 socket still does.
    let run = server.path.parent().unwrap();
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outcome = status_as_nobody(&server.path).await;
    assert!(
        outcome.starts_with("connect PermissionDenied: "),
        "{outcome}"
    );

    // With the socket opened too, the server itself refuses another uid.
    std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let outcome = status_as_nobody(&server.path).await;
    assert_eq!(
        outcome,
        "server 403: permission denied: only uid 0 may use the control socket"
    );
    assert!(server.handler.calls().is_empty());
}

// ---------------------------------------------------------------- timeouts and shutdown

#[tokio::test(start_paused = true)]
async fn shutdown_ends_serve_without_waiting_for_idle_connections() {
    let mut server = Server::start().await;
    // A keep-alive connection that has had its answer and now sits idle.
    let mut idle = UnixStream::connect(&server.path).await.unwrap();
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    idle.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");

    let task = server.stop();
    // Paused time: had serve waited for the grace period, the clock would
    // have jumped to this timeout first.
    tokio::time::timeout(server::SHUTDOWN_GRACE / 4, task)
        .await
        .expect("serve ended before the grace period")
        .expect("serve did not panic");
    let e = UnixStream::connect(&server.path).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_request_does_not_hold_shutdown_past_the_grace() {
    let mut server = Server::start().await;
    let mut stuck = UnixStream::connect(&server.path).await.unwrap();
    stuck
        .write_all(b"POST /v1/drain HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let task = server.stop();
    tokio::time::timeout(server::SHUTDOWN_GRACE * 2, task)
        .await
        .expect("serve ended once the grace period was over")
        .expect("serve did not panic");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_nothing_is_disconnected() {
    let server = Server::start().await;
    let mut silent = UnixStream::connect(&server.path).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection")
        .expect("read");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // And the server still serves others.
    let answer = raw(&server.path, &request("GET", "/v1/status", ""))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_a_408() {
    let server = Server::start().await;
    let mut slow = UnixStream::connect(&server.path).await.unwrap();
    slow.write_all(b"POST /v1/drain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut answer))
        .await
        .expect("the server answered")
        .expect("read");
    let answer = parse_raw(&answer).expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.error().contains("did not arrive within 10s"),
        "{answer:?}"
    );
    assert!(server.handler.calls().is_empty());
}
