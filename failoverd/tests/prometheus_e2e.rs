//! The shipped alert rules against a real Prometheus, as root: the real `failoverd run` with
//! real backend processes, scraped by Debian's `prometheus` loading
//! `configs/prometheus/alerts.yml`; a backend is SIGKILLed and `FailoverdFailover` must fire.
//!
//! The Prometheus under test is brand new: it has never seen this daemon before the trial. The
//! daemon registers its alert counters at 0 from the start, so the first failover is an increase
//! Prometheus can see, and the alert must fire without any history.
//!
//! On the way, every metric family Prometheus scraped must carry the HELP text and TYPE of
//! `metrics::catalog` (Prometheus's own metadata API says what it read).
//!
//! Needs `/usr/bin/prometheus` (or `prometheus` on `PATH`); everything listens on 127.0.0.1 and
//! every process and file is removed by guards, also when the trial fails.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use failoverd::metrics::catalog;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use support::{
    env::Env,
    kernel::{check, exactly, loopback, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};

type TestResult = Result<(), Failed>;

/// The service name in the daemon's config and in every metric label.
const SERVICE: &str = "svc";
/// The alert `configs/prometheus/alerts.yml` must define.
const ALERT: &str = "FailoverdFailover";

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials = vec![Trial::test(
        "failover_alert_fires_in_a_real_prometheus",
        failover_alert_fires_in_a_real_prometheus,
    )];
    libtest_mimic::run(&args, trials).exit();
}

/// The repo's alert rules, the file operators load.
fn alerts_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/prometheus/alerts.yml")
}

/// `prometheus` or `promtool`: Debian's, else whatever `PATH` has.
fn sibling_binary(name: &str) -> PathBuf {
    let debian = Path::new("/usr/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// A loopback port nobody listens on right now (bound, read, released).
fn free_port() -> Result<u16, Failed> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A plain HTTP/1.0 GET (so no chunked bodies) with 2 s limits on connect, write and each read;
/// returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let what = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let limit = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, limit).map_err(what)?;
    stream.set_read_timeout(Some(limit)).map_err(what)?;
    stream.set_write_timeout(Some(limit)).map_err(what)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(what)?;
    let mut raw = Vec::new();
    // Bounded by the read timeout per read and by the server closing after one response.
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(what)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Calls `f` every `every` until it returns `Some`, for at most `limit`; the error names `what`
/// and the last thing `f` reported.
fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, Failed> {
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    // Bounded in time, and in count as well should a single call ever take no time at all.
    let max_rounds = (limit.as_millis() / every.as_millis().max(1)) as usize + 1;
    for _ in 0..max_rounds {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = String::from("not yet"),
            Err(e) => last = e,
        }
        if start.elapsed() >= limit {
            break;
        }
        std::thread::sleep(every);
    }
    Err(format!("{what}: not within {limit:?}; last: {last}").into())
}

/// A scratch directory, removed on drop. Declared before the processes that use it, so it
/// outlives them (locals drop in reverse order).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Proc {
    /// Fails if the process has already exited (it would otherwise only show up as a timeout).
    fn alive(&mut self, name: &str) -> Result<(), String> {
        match self.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{name} exited: {status}")),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }
}

/// A Prometheus HTTP API answer's `data`, after checking `status` is `success`.
fn api(prom: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(prom, path)?;
    let v: Value = serde_json::from_str(&body)
        .map_err(|e| format!("GET {path}: {status}, not JSON ({e}): {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("GET {path}: {status}: {body}"));
    }
    Ok(v["data"].clone())
}

/// An instant query's vector result.
fn query(prom: SocketAddr, promql: &str) -> Result<Vec<Value>, String> {
    let data = api(prom, &format!("/api/v1/query?query={}", url_encode(promql)))?;
    match data["result"].as_array() {
        Some(series) if data["resultType"] == "vector" => Ok(series.clone()),
        _ => Err(format!("{promql}: not a vector: {data}")),
    }
}

/// A sample's value (`[time, "value"]`) as a number.
fn sample_value(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// The active `FailoverdFailover` alerts for our service.
fn our_alerts(prom: SocketAddr) -> Result<Vec<Value>, String> {
    let data = api(prom, "/api/v1/alerts")?;
    let alerts = data["alerts"]
        .as_array()
        .ok_or_else(|| format!("/api/v1/alerts: no alerts array: {data}"))?;
    Ok(alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == ALERT && a["labels"]["service"] == SERVICE)
        .cloned()
        .collect())
}

/// `Some` once Prometheus has metadata for every metric family scraped from `job="failoverd"`,
/// each with a non-empty help text and the catalog's type, `process_resident_memory_bytes` and
/// `process_open_fds` included; an error names a family that is missing from the catalog or
/// described differently.
fn described_as_catalogued(prom: SocketAddr) -> Result<Option<()>, String> {
    let names = api(
        prom,
        &format!(
            "/api/v1/label/__name__/values?match[]={}",
            url_encode(r#"{job="failoverd"}"#)
        ),
    )?;
    let metadata = api(prom, "/api/v1/metadata")?;
    let mut families = std::collections::BTreeSet::new();
    for name in names
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        // Prometheus's own series about the target (up, scrape_*, ALERTS) carry its job too.
        if !name.starts_with("failoverd_") && !name.starts_with("process_") {
            continue;
        }
        let metric = catalog::find(name)
            .or_else(|| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find_map(catalog::find)
                    .filter(|m| m.kind == catalog::Kind::Histogram)
            })
            .ok_or_else(|| format!("failoverd exports {name}, which is not in the catalog"))?;
        families.insert(metric.name);
        let Some(entry) = metadata[metric.name].as_array().and_then(|m| m.first()) else {
            return Ok(None);
        };
        if entry["type"] != metric.kind.word() || entry["help"] != metric.help {
            return Err(format!(
                "{}: prometheus holds {entry}, the catalog says type {} help {:?}",
                metric.name,
                metric.kind.word(),
                metric.help
            ));
        }
    }
    let process = ["process_resident_memory_bytes", "process_open_fds"];
    Ok(process.iter().all(|p| families.contains(p)).then_some(()))
}

/// The last lines of Prometheus's log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn failover_alert_fires_in_a_real_prometheus() -> TestResult {
    let alerts = alerts_file();
    let alerts = alerts.canonicalize().map_err(|e| {
        format!(
            "the alert rules {} are needed by this test: {e}",
            alerts.display()
        )
    })?;

    let env = Env::new("prom")?;
    let scratch = Scratch(std::env::temp_dir().join(support::unique_name("fo-prom", "e2e")?));
    std::fs::create_dir_all(&scratch.0)?;
    let dir = scratch.0.clone();
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip("127.79.20.1:80");

    // The daemon, with its metrics on a port we know.
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let datapath: String = env
        .yaml_datapath()
        .lines()
        .filter(|l| !l.starts_with("metrics:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = dir.join("failoverd.yaml");
    std::fs::write(
        &config,
        format!(
            "{datapath}metrics: {{ listen: '{metrics}' }}\ncontrol:\n  socket: {}\n  state_dir: {}\n\
             services:\n  - name: {SERVICE}\n    vip: {}\n    \
             health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n    \
             backends:\n      - {{ name: a, address: '{}', priority: 0 }}\n      \
             - {{ name: b, address: '{}', priority: 1 }}\n",
            dir.join("run/control.sock").display(),
            dir.join("state").display(),
            vip.addr,
            a.addr(),
            b.addr(),
        ),
    )?;
    let mut daemon = Proc(
        Command::new(env!("CARGO_BIN_EXE_failoverd"))
            .args(["run", "--log", "warn", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()?,
    );
    poll(
        "failoverd's /readyz answering 200",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            daemon.alive("failoverd")?;
            Ok(matches!(http_get(metrics, "/readyz"), Ok((200, _))).then_some(()))
        },
    )?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;

    // Prometheus: scrape and evaluate every second, with the repo's rules.
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: failoverd\n    static_configs:\n      \
             - targets: ['{metrics}']\n",
            alerts.display()
        ),
    )?;
    let data = dir.join("data");
    let log = dir.join("prometheus.log");
    let log_file = std::fs::File::create(&log)?;
    let mut prometheus = Proc(
        Command::new(sibling_binary("prometheus"))
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting prometheus (apt-get install prometheus): {e}"))?,
    );
    let with_log = |e: Failed| -> Failed {
        format!("{e:?}\n--- prometheus log (tail) ---\n{}", log_tail(&log)).into()
    };
    poll(
        "prometheus's /-/ready answering 200",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            prometheus.alive("prometheus")?;
            Ok(matches!(http_get(prom, "/-/ready"), Ok((200, _))).then_some(()))
        },
    )
    .map_err(with_log)?;

    // The rule is loaded and healthy, and failoverd is being scraped.
    poll(
        "the alerting rule loaded and evaluated without error",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let data = api(prom, "/api/v1/rules?type=alert")?;
            let rule = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .find(|r| r["name"] == ALERT)
                .cloned()
                .ok_or_else(|| format!("no rule {ALERT} among {data}"))?;
            match rule["health"].as_str() {
                Some("ok") => Ok(Some(())),
                Some("err") => Err(format!("rule {ALERT} fails to evaluate: {rule}")),
                _ => Ok(None),
            }
        },
    )
    .map_err(with_log)?;
    poll(
        "prometheus scraping failoverd (up == 1)",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || {
            let series = query(prom, "up{job=\"failoverd\"}")?;
            Ok((series.len() == 1 && sample_value(&series[0]) == Some(1.0)).then_some(()))
        },
    )
    .map_err(with_log)?;
    // Every family Prometheus scraped from the daemon came with its HELP and TYPE, as the
    // catalog says; the process metrics are among them.
    poll(
        "prometheus holding HELP and TYPE for every scraped failoverd metric",
        Duration::from_secs(20),
        Duration::from_millis(250),
        || described_as_catalogued(prom),
    )
    .map_err(with_log)?;
    // Start-up is not a failover: two more evaluations with data must not fire.
    std::thread::sleep(Duration::from_millis(2500));
    let before = our_alerts(prom)?;
    check(before.is_empty(), || {
        format!("{ALERT} is active before any failover: {before:?}")
    })?;

    // The failover: a dies, b takes over.
    let killed = Instant::now();
    a.kill();
    until_table(&env, vip, Duration::from_secs(5), exactly(&[b.addr()]))?;
    let table_after = killed.elapsed();

    let alert = poll(
        "FailoverdFailover firing",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            prometheus.alive("prometheus")?;
            daemon.alive("failoverd")?;
            Ok(our_alerts(prom)?
                .into_iter()
                .find(|a| a["state"] == "firing"))
        },
    )
    .map_err(with_log)?;
    let fired_after = killed.elapsed();
    println!(
        "{ALERT} fired {fired_after:?} after the SIGKILL (kernel table switched after \
         {table_after:?}): {alert}"
    );

    check(
        alert["labels"]["from_priority"] == "0" && alert["labels"]["to_priority"] == "1",
        || format!("the alert should say priority 0 -> 1: {alert}"),
    )?;

    // Exactly one failover, from priority 0 to 1.
    let series = query(
        prom,
        &format!("failoverd_failovers_total{{service=\"{SERVICE}\"}}"),
    )?;
    let total: f64 = series.iter().filter_map(sample_value).sum();
    check(total == 1.0, || {
        format!("want exactly one failover counted, got {total}: {series:?}")
    })?;
    // Every priority pair is exported from the start at 0; exactly one moved.
    let counted: Vec<_> = series
        .iter()
        .filter(|s| sample_value(s) != Some(0.0))
        .collect();
    check(
        counted.len() == 1
            && counted[0]["metric"]["from_priority"] == "0"
            && counted[0]["metric"]["to_priority"] == "1",
        || format!("want one series from_priority=0 to_priority=1: {series:?}"),
    )?;
    Ok(())
}
