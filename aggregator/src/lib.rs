//! `heimdall-aggregator`: the program that receives what agents ship, stores it and
//! answers for it. It is the top of a stack of crates, each depending only on those
//! below it:
//!
//! ```text
//! heimdall-aggregator   ingest (QUIC), the HTTP API server, config, `run`
//!   heimdall-alert      rule engine, alert states, notifications, incidents
//!     heimdall-query    log pipelines and metric queries
//!       heimdall-store  hot SQLite, warm and cold segments, lifecycle, the reader
//!         heimdall-logql    LogQL syntax (no I/O)
//!     heimdall-rules    rule files (also used by the CLI)
//!   heimdall-api        request and response types (also used by the CLI)
//! heimdall-common       records, wire protocol, TLS, limits (also the agent's)
//! ```
//!
//! Layout:
//! - [`config`]: the TOML file and its validation.
//! - [`ingest`]: the QUIC server (mutual TLS, batch streams, agent status).
//! - [`api`]: HTTP (Loki-compatible endpoints, agents, alerts, metrics).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod ingest;

use config::AggregatorConfig;
use heimdall_common::wire::Limits;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Structural failures that stop the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS files are missing or invalid.
    #[error("TLS: {0} (run `heimdall-aggregator init` to create a CA and certificates)")]
    Tls(#[from] heimdall_common::tls::Error),
    /// The database cannot be opened.
    #[error(transparent)]
    Store(#[from] heimdall_store::hot::Error),
    /// A socket cannot be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory: {0}")]
    StateDir(std::io::Error),
    /// The cold tier cannot be set up.
    #[error(transparent)]
    Cold(heimdall_store::cold::Error),
    /// Recovery of an interrupted tier move failed.
    #[error("storage lifecycle: {0}")]
    Lifecycle(heimdall_store::lifecycle::Error),
    /// The alert database cannot be opened.
    #[error(transparent)]
    Alerting(#[from] heimdall_alert::eval::Error),
    /// The HTTP client for notifications cannot be made.
    #[error("HTTP client for notifications: {0}")]
    Http(String),
}

/// Where the aggregator actually listens (ports chosen by the OS when 0 was asked).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenAddrs {
    pub ingest: SocketAddr,
    pub api: SocketAddr,
}

/// Name of the file in the state directory that records [`ListenAddrs`].
pub const LISTEN_FILE: &str = "listen.json";

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted aggregator must get its port back at once.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// The QUIC endpoint, with a stateless-reset key kept in the state directory: after a
/// crash and restart, the aggregator can still reset its old connections, so agents
/// reconnect at once instead of waiting for their idle timeout.
fn quic_endpoint(
    cfg: &AggregatorConfig,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, Error> {
    let path = cfg.state_dir.join("quic-reset-key");
    let key = match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => k,
        _ => {
            let mut k = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .map_err(|_| Error::StateDir(std::io::Error::other("no system randomness")))?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(Error::StateDir)?;
                f.write_all(&k)
                    .and_then(|()| f.sync_all())
                    .map_err(Error::StateDir)?;
            }
            std::fs::rename(&tmp, &path).map_err(Error::StateDir)?;
            k
        }
    };
    let endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &key,
    )));
    let bind = |source| Error::Bind {
        what: "QUIC ingest",
        addr: cfg.ingest_listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(cfg.ingest_listen).map_err(bind)?;
    quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)
}

/// Runs the aggregator until `shutdown` is cancelled, then drains.
///
/// # Errors
/// [`Error`] for structural failures at start.
pub async fn run(
    cfg: AggregatorConfig,
    shutdown: CancellationToken,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(Error::StateDir)?;
    if let Err(e) = heimdall_common::tls::check_own_certificate(&cfg.tls.cert) {
        if matches!(e, heimdall_common::tls::Error::NotValidNow { .. }) {
            tracing::error!(error = %e, "server certificate is not valid now; agents will refuse it");
        } else {
            return Err(e.into());
        }
    }
    let server_config = heimdall_common::tls::server_config(&cfg.tls)?;
    let db = cfg.db_path.clone();
    let max_rows = cfg.max_group_rows;
    let partition_ns = cfg.partition_ns;
    let store = tokio::task::spawn_blocking(move || {
        heimdall_store::hot::HotStore::open_with(&db, max_rows, partition_ns)
    })
    .await
    .expect("store open task does not panic")?;
    let store = Arc::new(store);
    let cold = match &cfg.cold {
        Some(c) => Some(Arc::new(
            heimdall_store::cold::ColdStore::new(c, tokio::runtime::Handle::current())
                .map_err(Error::Cold)?,
        )),
        None => None,
    };
    let lifecycle = heimdall_store::lifecycle::Lifecycle {
        store: store.clone(),
        db_path: cfg.db_path.clone(),
        cfg: cfg.lifecycle.clone(),
        cold: cold.clone(),
    };
    let lc_token = shutdown.child_token();
    let lifecycle = tokio::task::spawn_blocking(move || lifecycle.start(lc_token))
        .await
        .expect("lifecycle start does not panic")
        .map_err(Error::Lifecycle)?;
    let tiers = Arc::new(heimdall_store::read::Tiers {
        warm_dir: cfg.lifecycle.warm_dir.clone(),
        cold,
        hot_index: Some(store.index().clone()),
        blooms: heimdall_store::read::BloomCache::default(),
    });
    let endpoint = quic_endpoint(&cfg, server_config)?;
    let http = bind_tcp(cfg.api_listen).map_err(|source| Error::Bind {
        what: "HTTP API",
        addr: cfg.api_listen,
        source,
    })?;
    let addrs = ListenAddrs {
        ingest: endpoint.local_addr().map_err(Error::StateDir)?,
        api: http.local_addr().map_err(Error::StateDir)?,
    };
    let listen_file = cfg.state_dir.join(LISTEN_FILE);
    let tmp = listen_file.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&addrs).expect("addresses serialise"),
    )
    .and_then(|()| std::fs::rename(&tmp, &listen_file))
    .map_err(Error::StateDir)?;
    tracing::info!(ingest = %addrs.ingest, api = %addrs.api, db = %cfg.db_path.display(), "aggregator listening");

    let registry = Arc::new(ingest::Registry::default());
    let memory_kib = u32::try_from(cfg.max_memory_bytes / 1024).unwrap_or(u32::MAX);
    let limits = Limits::default();
    let listener = ingest::listener::Listener {
        endpoint,
        store: store.clone(),
        registry: registry.clone(),
        settings: ingest::listener::IngestSettings {
            server_id: cfg.server_id.clone(),
            limits,
            max_streams_per_connection: cfg.max_streams_per_connection,
            max_connections_per_agent: cfg.max_connections_per_agent,
            memory: Arc::new(tokio::sync::Semaphore::new(memory_kib as usize)),
            memory_kib,
        },
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
    };
    let ingest = tokio::spawn(listener.run(shutdown.child_token(), cfg.shutdown_grace));

    // Alerting: the engine thread, told of every commit, and one dispatcher per receiver.
    let wake: Vec<Arc<tokio::sync::Notify>> = cfg
        .alerting
        .receivers
        .iter()
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let mut alerting = cfg.alerting.clone();
    if alerting.external_url.ends_with(":0") {
        // The default names `api.listen`; with port 0 the real port is known only now.
        alerting.external_url = format!("http://{}", addrs.api);
    }
    let engine_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (alert_handle, engine) = heimdall_alert::eval::start(
        heimdall_alert::eval::EngineDeps {
            cfg: alerting,
            groups: cfg.rule_groups.clone(),
            hot_path: cfg.db_path.clone(),
            tiers: tiers.clone(),
            hosts: registry.clone(),
            wake: wake.clone(),
            eval_limits: heimdall_query::eval::Limits {
                max_series: cfg.max_series,
                ..Default::default()
            },
        },
        engine_stop.clone(),
    )?;
    {
        let h = alert_handle.clone();
        store.on_commit(Box::new(move |c| h.committed(c)));
    }
    heimdall_common::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::Http(e.to_string()))?;
    let mut dispatchers = tokio::task::JoinSet::new();
    for (r, w) in cfg.alerting.receivers.iter().zip(&wake) {
        let d = heimdall_alert::notify::Dispatcher {
            receiver: r.clone(),
            db_path: cfg.alerting.db_path.clone(),
            wake: w.clone(),
            client: client.clone(),
        };
        dispatchers.spawn(d.run(shutdown.child_token()));
    }
    let alert_api = Arc::new(api::alerts::AlertApi {
        handle: alert_handle.clone(),
        rule_paths: cfg.alerting.rules.clone(),
        default_interval: cfg.alerting.evaluation_interval,
    });
    tokio::spawn(reload_on_hangup(alert_api.clone(), shutdown.child_token()));

    let state = Arc::new(api::ApiState {
        db_path: cfg.db_path.clone(),
        registry,
        prometheus,
        max_limit: cfg.max_limit,
        query_timeout: cfg.query_timeout,
        store: store.clone(),
        tiers,
        compact_now: Box::new(lifecycle.trigger_fn()),
        tokens: cfg.tokens.clone(),
        eval_limits: heimdall_query::eval::Limits {
            max_series: cfg.max_series,
            ..Default::default()
        },
        alerting: Some(alert_api),
        align_queries_with_step: cfg.align_queries_with_step,
        push: cfg.push,
    });
    let token = shutdown.child_token();
    let tls = match &cfg.api_tls {
        Some((c, k)) => Some(api::tls::server_config(c, k)?),
        None => None,
    };
    let api = tokio::spawn(async move {
        let router = api::router(state);
        let res = match tls {
            Some(tls) => match api::tls::TlsListener::new(http, tls) {
                Ok(l) => {
                    axum::serve(l, router)
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                axum::serve(http, router)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
            }
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "HTTP API failed");
        }
    });

    // Under systemd (Type=notify): ready once both listeners are bound and the stores
    // open; the watchdog is fed while the runtime and its blocking pool answer.
    let systemd = heimdall_common::systemd::Notifier::from_env();
    systemd.ready(&format!("ingest on {}, API on {}", addrs.ingest, addrs.api));
    let watchdog = tokio::spawn(heimdall_common::systemd::watchdog_loop(
        systemd.clone(),
        || async { tokio::task::spawn_blocking(|| ()).await.is_ok() },
    ));

    shutdown.cancelled().await;
    watchdog.abort();
    systemd.stopping("finishing in-flight batches");
    tracing::info!("shutting down: finishing in-flight batches");
    let _ = ingest.await;
    let _ = tokio::time::timeout(cfg.shutdown_grace, api).await;
    // The engine commits its state after every round; stop it, then the dispatchers
    // (what they have not delivered stays in the outbox for the next start).
    engine_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(alert_handle);
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    while dispatchers.join_next().await.is_some() {}
    // The lifecycle finishes the step it is in (each is safe to interrupt anyway).
    let _ = tokio::task::spawn_blocking(move || lifecycle.join()).await;
    // Every connection task is done, so this is the last handle: the writer commits what
    // is queued and checkpoints the WAL.
    match Arc::try_unwrap(store) {
        Ok(mut s) => {
            let _ = tokio::task::spawn_blocking(move || s.close()).await;
        }
        Err(_) => tracing::warn!("store still in use at shutdown; leaving it to close on exit"),
    }
    let _ = std::fs::remove_file(&listen_file);
    tracing::info!("aggregator stopped");
    Ok(())
}

/// SIGHUP: reads the rule files again (the old rules stay when any is invalid).
async fn reload_on_hangup(a: Arc<api::alerts::AlertApi>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        tracing::info!("SIGHUP received: reloading alert rules");
        let (paths, iv, h) = (a.rule_paths.clone(), a.default_interval, a.handle.clone());
        let res = tokio::task::spawn_blocking(move || {
            let groups = heimdall_rules::load(&paths, iv).map_err(|p| p.to_string())?;
            h.command(heimdall_alert::eval::Command::Reload(groups))
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "alert rules not reloaded; the old rules stay")
            }
            Err(e) => tracing::error!(error = %e, "alert rule reload failed"),
        }
    }
}
