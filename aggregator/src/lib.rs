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
//! - [`console`]: the web UI's embedded files.
//! - [`api`]: HTTP (Loki-compatible endpoints and pushes, Drilldown, OTLP logs, agents,
//!   alerts, metrics).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod console;
pub mod ingest;

use config::AggregatorConfig;
use heimdall_common::tasks::Stage;
use heimdall_common::wire::Limits;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
    Http(#[source] reqwest::Error),
}

/// Where the aggregator actually listens (ports chosen by the OS when 0 was asked).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenAddrs {
    pub ingest: SocketAddr,
    pub api: SocketAddr,
    /// The OTLP listener, when it runs.
    #[serde(default)]
    pub otlp: Option<SocketAddr>,
}

/// Name of the file in the state directory that records [`ListenAddrs`].
pub const LISTEN_FILE: &str = "listen.json";

/// Query connections to the hot database kept idle between queries.
const QUERY_READERS_KEPT: usize = 4;

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
            heimdall_common::fs::write_atomic_mode(&path, &k, 0o600).map_err(Error::StateDir)?;
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
/// Work runs in stages ([`Stage`]) that stop in the order data flows: `serving` (QUIC
/// ingest, the HTTP API, the SIGHUP reloader, the watchdog) first, so nothing new
/// arrives; then `alerting` (the rule engine, which has seen every commit, and the
/// dispatchers, whose undelivered notifications stay in the outbox); then `storage`
/// (the lifecycle finishes its step, the hot store's writer commits what is queued).
///
/// # Errors
/// [`Error`] for structural failures at start.
pub async fn run(
    cfg: AggregatorConfig,
    shutdown: CancellationToken,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), Error> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(Error::StateDir)?;
    let server_config = tls_config(&cfg)?;
    // The lifecycle hears SIGTERM at once (its steps are safe to interrupt); the hot
    // store closes last.
    let storage_stage = Stage::child_of("storage", &shutdown);
    let storage = Storage::open(&cfg, &storage_stage).await?;
    let endpoint = quic_endpoint(&cfg, server_config)?;
    let http = bind_tcp(cfg.api_listen).map_err(|source| Error::Bind {
        what: "HTTP API",
        addr: cfg.api_listen,
        source,
    })?;
    let otlp = match cfg.otlp_listen {
        None => None,
        Some((addr, explicit)) => match bind_tcp(addr) {
            Ok(l) => Some(l),
            // The default port taken (a collector on the same host, another aggregator):
            // OTLP stays on the API's listener. An address asked for must bind.
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, "the default OTLP port is taken; OTLP is served on the API's listener only (/otlp/v1/logs); set otlp.listen to choose another");
                None
            }
            Err(source) => {
                return Err(Error::Bind {
                    what: "OTLP",
                    addr,
                    source,
                })
            }
        },
    };
    let addrs = ListenAddrs {
        ingest: endpoint.local_addr().map_err(Error::StateDir)?,
        api: http.local_addr().map_err(Error::StateDir)?,
        otlp: match &otlp {
            Some(l) => Some(l.local_addr().map_err(Error::StateDir)?),
            None => None,
        },
    };
    let listen_file = cfg.state_dir.join(LISTEN_FILE);
    heimdall_common::fs::write_atomic(
        &listen_file,
        &serde_json::to_vec(&addrs).expect("addresses serialise"),
    )
    .map_err(Error::StateDir)?;
    tracing::info!(ingest = %addrs.ingest, api = %addrs.api, db = %cfg.db_path.display(), "aggregator listening");

    let registry = Arc::new(ingest::Registry::default());
    // One memory budget for batches and pushes in flight, over QUIC and HTTP.
    let memory_kib = u32::try_from(cfg.max_memory_bytes / 1024).unwrap_or(u32::MAX);
    metrics::gauge!("heimdall_aggregator_ingest_memory_limit_bytes")
        .set(f64::from(memory_kib) * 1024.0);
    let memory = Arc::new(tokio::sync::Semaphore::new(memory_kib as usize));
    let alerting = Stage::new("alerting");
    let alert_api = start_alerting(&cfg, addrs, &storage, &registry, &alerting)?;
    let serving = Stage::child_of("serving", &shutdown);
    serving.spawn(
        ingest_listener(
            &cfg,
            endpoint,
            &storage,
            &registry,
            (memory.clone(), memory_kib),
        )
        .run(serving.token(), cfg.shutdown_grace),
    );
    serving.spawn(reload_on_hangup(alert_api.clone(), serving.token()));
    let state = Arc::new(api::ApiState {
        db_path: cfg.db_path.clone(),
        readers: Arc::new(heimdall_store::hot::ReaderPool::new(
            &cfg.db_path,
            QUERY_READERS_KEPT,
        )),
        registry,
        prometheus,
        max_limit: cfg.max_limit,
        query_timeout: cfg.query_timeout,
        store: storage.store.clone(),
        tiers: storage.tiers.clone(),
        lifecycle: storage.lifecycle.clone(),
        tokens: cfg.tokens.clone(),
        eval_limits: heimdall_query::eval::Limits {
            max_series: cfg.max_series,
            ..Default::default()
        },
        alerting: Some(alert_api),
        align_queries_with_step: cfg.align_queries_with_step,
        push: cfg.push.clone(),
        otlp: cfg.otlp.clone(),
        retention: cfg.lifecycle.retention,
        memory: (memory, memory_kib),
    });
    let tls = match &cfg.api_tls {
        Some((c, k)) => Some(api::tls::server_config(c, k)?),
        None => None,
    };
    if let Some(l) = otlp {
        serving.spawn(serve_api(
            l,
            tls.clone(),
            api::otlp_router(state.clone()),
            serving.token(),
        ));
    }
    serving.spawn(serve_api(http, tls, api::router(state), serving.token()));

    // Under systemd (Type=notify): ready once both listeners are bound and the stores
    // open; the watchdog is fed while the runtime and its blocking pool answer.
    let systemd = heimdall_common::systemd::Notifier::from_env();
    systemd.ready(&format!("ingest on {}, API on {}", addrs.ingest, addrs.api));
    {
        let (systemd, token) = (systemd.clone(), serving.token());
        serving.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = heimdall_common::systemd::watchdog_loop(systemd, || async {
                    tokio::task::spawn_blocking(|| ()).await.is_ok()
                }) => {}
            }
        });
    }

    shutdown.cancelled().await;
    systemd.stopping("finishing in-flight batches");
    tracing::info!("shutting down: finishing in-flight batches");
    // Ingest gives in-flight batches `shutdown_grace`; the API its open requests.
    serving
        .stop(cfg.shutdown_grace + Duration::from_secs(5))
        .await;
    alerting.stop(Duration::from_secs(30)).await;
    storage.close(&storage_stage).await;
    let _ = std::fs::remove_file(&listen_file);
    tracing::info!("aggregator stopped");
    Ok(())
}

fn tls_config(cfg: &AggregatorConfig) -> Result<quinn::ServerConfig, Error> {
    if let Err(e) = heimdall_common::tls::check_own_certificate(&cfg.tls.cert) {
        if matches!(e, heimdall_common::tls::Error::NotValidNow { .. }) {
            tracing::error!(error = %e, "server certificate is not valid now; agents will refuse it");
        } else {
            return Err(e.into());
        }
    }
    Ok(heimdall_common::tls::server_config(&cfg.tls)?)
}

/// The storage tiers and their lifecycle.
struct Storage {
    store: Arc<heimdall_store::hot::HotStore>,
    tiers: Arc<heimdall_store::read::Tiers>,
    lifecycle: heimdall_store::lifecycle::LifecycleHandle,
}

impl Storage {
    /// Opens the hot store and the cold tier, recovers an interrupted tier move and
    /// starts the lifecycle in `stage`.
    async fn open(cfg: &AggregatorConfig, stage: &Stage) -> Result<Storage, Error> {
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
        let st = stage.clone();
        let lifecycle = tokio::task::spawn_blocking(move || lifecycle.start(&st))
            .await
            .expect("lifecycle start does not panic")
            .map_err(Error::Lifecycle)?;
        let tiers = Arc::new(heimdall_store::read::Tiers {
            warm_dir: cfg.lifecycle.warm_dir.clone(),
            cold,
            hot_index: Some(store.index().clone()),
            blooms: heimdall_store::read::BloomCache::default(),
        });
        Ok(Storage {
            store,
            tiers,
            lifecycle,
        })
    }

    /// Stops the lifecycle, then closes the hot store: its writer commits what is
    /// queued and checkpoints the WAL. Called when nothing else holds the store.
    async fn close(self, stage: &Stage) {
        stage.stop(Duration::from_secs(60)).await;
        let Storage { store, tiers, .. } = self;
        drop(tiers);
        match Arc::try_unwrap(store) {
            Ok(mut s) => {
                let _ = tokio::task::spawn_blocking(move || s.close()).await;
            }
            Err(_) => tracing::warn!("store still in use at shutdown; leaving it to close on exit"),
        }
    }
}

fn ingest_listener(
    cfg: &AggregatorConfig,
    endpoint: quinn::Endpoint,
    storage: &Storage,
    registry: &Arc<ingest::Registry>,
    (memory, memory_kib): (Arc<tokio::sync::Semaphore>, u32),
) -> ingest::listener::Listener {
    ingest::listener::Listener {
        endpoint,
        store: storage.store.clone(),
        registry: registry.clone(),
        settings: ingest::listener::IngestSettings {
            server_id: cfg.server_id.clone(),
            limits: Limits::default(),
            max_streams_per_connection: cfg.max_streams_per_connection,
            max_connections_per_agent: cfg.max_connections_per_agent,
            memory,
            memory_kib,
            service_name_from: cfg.push.service_name_from.clone(),
        },
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
    }
}

/// Starts the rule engine (told of every commit) and one dispatcher per receiver in
/// `stage`.
fn start_alerting(
    cfg: &AggregatorConfig,
    addrs: ListenAddrs,
    storage: &Storage,
    registry: &Arc<ingest::Registry>,
    stage: &Stage,
) -> Result<Arc<api::alerts::AlertApi>, Error> {
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
    let handle = heimdall_alert::eval::start(
        heimdall_alert::eval::EngineDeps {
            cfg: alerting,
            groups: cfg.rule_groups.clone(),
            hot_path: cfg.db_path.clone(),
            tiers: storage.tiers.clone(),
            hosts: registry.clone(),
            wake: wake.clone(),
            eval_limits: heimdall_query::eval::Limits {
                max_series: cfg.max_series,
                ..Default::default()
            },
        },
        stage,
    )?;
    {
        let h = handle.clone();
        storage.store.on_commit(Box::new(move |c| h.committed(c)));
    }
    heimdall_common::tls::install_default_provider();
    let client = reqwest::Client::builder().build().map_err(Error::Http)?;
    for (r, w) in cfg.alerting.receivers.iter().zip(&wake) {
        let d = heimdall_alert::notify::Dispatcher {
            receiver: r.clone(),
            db_path: cfg.alerting.db_path.clone(),
            wake: w.clone(),
            client: client.clone(),
        };
        stage.spawn(d.run(stage.token()));
    }
    Ok(Arc::new(api::alerts::AlertApi {
        handle,
        rule_paths: cfg.alerting.rules.clone(),
        default_interval: cfg.alerting.evaluation_interval,
    }))
}

/// Serves the HTTP API (with TLS when configured) until `stop`, then lets open
/// requests finish.
async fn serve_api(
    http: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    stop: CancellationToken,
) {
    let res = match tls {
        Some(tls) => match api::tls::TlsListener::new(http, tls) {
            Ok(l) => {
                axum::serve(l, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
            Err(e) => Err(e),
        },
        None => {
            axum::serve(http, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    };
    if let Err(e) = res {
        tracing::error!(error = %e, "HTTP API failed");
    }
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
        match tokio::task::spawn_blocking(move || heimdall_rules::load(&paths, iv)).await {
            Ok(Ok(groups)) => {
                let reload = heimdall_alert::eval::Command::Reload(groups);
                if let Err(e) = h.command(reload).await {
                    tracing::error!(error = %e, "alert rules not reloaded; the old rules stay");
                }
            }
            Ok(Err(problems)) => {
                tracing::error!(error = %problems, "alert rules not reloaded; the old rules stay")
            }
            Err(e) => tracing::error!(error = %e, "alert rule reload failed"),
        }
    }
}
