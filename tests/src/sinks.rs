//! Receivers for alert notifications, started by tests: a local HTTP server that
//! records every request (standing in for a webhook endpoint, Slack or PagerDuty), a
//! real Prometheus Alertmanager (Debian package `prometheus-alertmanager`), and a real
//! SMTP server (`aiosmtpd` from PyPI) writing to a maildir.

use crate::{free_port, python, Proc};
use anyhow::bail;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the sink received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// Unix time in ns when it arrived.
    pub at_ns: i64,
    /// The status the sink answered.
    pub status: u16,
}

impl Request {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    /// Scripted answers (status, extra headers), used in order; then `default`.
    script: VecDeque<(u16, Vec<(String, String)>)>,
    default: u16,
}

/// A local HTTP server recording every request.
pub struct HttpSink {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

fn handle(mut s: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let n: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
        let (status, extra) = {
            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
            let (status, extra) = g.script.pop_front().unwrap_or((g.default, Vec::new()));
            g.requests.push(Request {
                method,
                path,
                headers,
                body,
                at: Instant::now(),
                at_ns: heimdall_common::record::now_ns(),
                status,
            });
            (status, extra)
        };
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: application/json\r\n"
        );
        for (k, v) in extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n{}");
        s.write_all(resp.as_bytes())?;
    }
}

impl HttpSink {
    /// Starts on a free loopback port, answering 200 (202 would do as well).
    ///
    /// # Errors
    /// Bind failures.
    pub fn start() -> anyhow::Result<HttpSink> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            default: 200,
            ..Shared::default()
        }));
        let sh = shared.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let sh = sh.clone();
                std::thread::spawn(move || {
                    let _ = handle(s, &sh);
                });
            }
        });
        Ok(HttpSink { addr, shared })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next requests with these statuses and headers, in order.
    pub fn script(&self, answers: Vec<(u16, Vec<(&str, &str)>)>) {
        let mut g = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for (s, h) in answers {
            g.script.push_back((
                s,
                h.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ));
        }
    }

    /// Answers every further request with `status` (after the script).
    pub fn set_default(&self, status: u16) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .default = status;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .clone()
    }

    /// Waits until `pred` holds for the requests so far.
    ///
    /// # Errors
    /// When it does not within `timeout`.
    pub fn wait(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Request]) -> bool,
    ) -> anyhow::Result<Vec<Request>> {
        let start = Instant::now();
        loop {
            let r = self.requests();
            if pred(&r) {
                return Ok(r);
            }
            if start.elapsed() > timeout {
                let bodies: Vec<String> = r
                    .iter()
                    .map(|q| {
                        format!(
                            "{} {} {}",
                            q.status,
                            q.path,
                            String::from_utf8_lossy(&q.body)
                        )
                    })
                    .collect();
                bail!(
                    "{what}: not seen in {timeout:?}; got {} request(s):\n{}",
                    r.len(),
                    bodies.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`), routing everything to a
/// webhook at `webhook` with `group_by: [alertname]` and 1 s group timers.
pub struct Alertmanager {
    pub proc: Proc,
    pub url: String,
}

impl Alertmanager {
    /// Starts it in `dir`.
    ///
    /// # Errors
    /// When the binary is missing (install `prometheus-alertmanager`) or it does not
    /// become ready in 30 s.
    pub fn start(dir: &Path, webhook: &str) -> anyhow::Result<Alertmanager> {
        Alertmanager::start_with(
            dir,
            webhook,
            "group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h",
        )
    }

    /// As [`Alertmanager::start`], with `route` (YAML lines under `route:`, indented
    /// by two spaces after the first) instead of the 1 s timers.
    ///
    /// # Errors
    /// As [`Alertmanager::start`].
    pub fn start_with(dir: &Path, webhook: &str, route: &str) -> anyhow::Result<Alertmanager> {
        std::fs::create_dir_all(dir)?;
        let bin = [
            "/usr/bin/prometheus-alertmanager",
            "/usr/local/bin/alertmanager",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        let Some(bin) = bin else {
            bail!("Alertmanager is not installed (Debian: apt install prometheus-alertmanager)");
        };
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            format!(
                "route:\n  receiver: hook\n  {route}\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )?;
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let proc = Proc::spawn_env(
            &bin,
            &[
                &format!("--config.file={}", cfg.display()),
                &format!("--storage.path={}", dir.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            &dir.join("alertmanager.log"),
            &[],
        )?;
        let start = Instant::now();
        loop {
            if ureq::get(&format!("{url}/-/ready")).call().is_ok() {
                return Ok(Alertmanager { proc, url });
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("Alertmanager not ready:\n{}", proc.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /api/v2/<path>` as JSON.
    ///
    /// # Errors
    /// HTTP errors.
    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(ureq::get(&format!("{}/api/v2/{path}", self.url))
            .call()?
            .into_json()?)
    }
}

/// A real SMTP server (aiosmtpd from PyPI) storing messages in a maildir.
pub struct SmtpSink {
    pub proc: Proc,
    pub addr: String,
    pub maildir: PathBuf,
}

impl SmtpSink {
    /// Starts it in `dir`.
    ///
    /// # Errors
    /// When it does not accept connections in 30 s.
    pub fn start(dir: &Path) -> anyhow::Result<SmtpSink> {
        std::fs::create_dir_all(dir)?;
        let maildir = dir.join("maildir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let proc = Proc::spawn_env(
            python(),
            &[
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &addr,
                "-c",
                "aiosmtpd.handlers.Mailbox",
                maildir.to_str().expect("utf-8 path"),
            ],
            &dir.join("smtp.log"),
            &[],
        )?;
        let start = Instant::now();
        loop {
            if TcpStream::connect(&addr).is_ok() {
                return Ok(SmtpSink {
                    proc,
                    addr,
                    maildir,
                });
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("aiosmtpd not ready:\n{}", proc.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                files.sort();
                for f in files {
                    if let Ok(t) = std::fs::read_to_string(f) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }
}
