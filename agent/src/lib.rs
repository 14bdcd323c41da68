//! `heimdall-agent`: the edge log agent.
//!
//! Layout:
//! - [`config`]: the TOML file and its validation.
//! - [`sources`]: where lines come from ([`sources::file`] tails files).
//! - [`pipeline`]: stages between sources and the spool ([`pipeline::batch`]).
//! - [`spool`]: the bounded on-disk log of batches, source of truth for checkpoints.
//! - [`ship`]: QUIC + mutual TLS delivery to the aggregator.
//! - [`hash`]: FNV-1a (stable across hosts) and a fast hasher for integer map keys.
//! - [`http`]: `/metrics`, `/live` and `/ready`.
//!
//! Data flows source thread → bounded channel → batcher task → spool → shipper task.
//! Shutdown: sources stop on the token, the batcher drains behind them into the spool,
//! the shipper delivers what it can within the grace period, and the spool keeps the rest.
#![forbid(unsafe_code)]

pub mod config;
pub mod hash;
pub mod http;
pub mod pipeline;
pub mod ship;
pub mod sources;
pub mod spool;

use config::AgentConfig;
use heimdall_common::record::Labels;
use heimdall_common::tasks::Stage;
use sources::{Checkpoint, Chunk, Positions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Chunks buffered between the file sources and the batcher.
const CHUNK_CHANNEL: usize = 16;

/// Structural failures that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// The TLS files are missing or unreadable.
    #[error("TLS: {0}")]
    Tls(#[from] heimdall_common::tls::Error),
    /// A thread could not be started.
    #[error("cannot start {0}: {1}")]
    Thread(&'static str, std::io::Error),
    /// The metrics listener cannot be bound.
    #[error("cannot listen for /metrics on {addr} (metrics.listen): {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The running sources: one thread per file source and one for the journal, in a
/// stage of their own (a reload stops them without stopping the agent).
struct Sources {
    stage: Stage,
    files: Vec<oneshot::Receiver<sources::file::FileTailer>>,
    journal: Option<oneshot::Receiver<sources::journald::JournalReader>>,
}

impl Sources {
    /// Starts the sources of `cfg`, resuming from `checkpoints`.
    fn start(
        cfg: &AgentConfig,
        checkpoints: &[Checkpoint],
        tx: &tokio::sync::mpsc::Sender<Chunk>,
        gauges: &Arc<sources::Gauges>,
        shutdown: &CancellationToken,
    ) -> Result<Sources, Error> {
        let mut base = Labels::new([("host", cfg.host.as_str())]);
        for (k, v) in &cfg.labels {
            base.insert(k.clone(), v.clone());
        }
        let (journal_cps, file_cps): (Vec<_>, Vec<_>) = checkpoints
            .iter()
            .cloned()
            .partition(|c| c.key.is_journal());
        let mut out = Sources {
            stage: Stage::child_of("sources", shutdown),
            files: Vec::new(),
            journal: None,
        };
        if let Some(j) = cfg.journald.clone() {
            let mut reader = sources::journald::JournalReader::new(j, &base, &journal_cps);
            if let Some(m) = &cfg.templates {
                let path = pipeline::template::state_path(&cfg.state_dir, reader.source());
                reader = reader.with_miner(pipeline::template::SourceMiner::new(
                    m.clone(),
                    "journald",
                    Some(path),
                ));
            }
            tracing::info!(
                cursor = reader.cursor.as_deref().unwrap_or("(none)"),
                "reading the journal"
            );
            let (tx, root) = (tx.clone(), shutdown.clone());
            let h = out
                .stage
                .spawn_thread("journal-source", move |stop| {
                    sources::journald::run(reader, tx, stop, root)
                })
                .map_err(|e| Error::Thread("journal source", e))?;
            out.journal = Some(h);
        }
        for (i, src) in cfg.files.iter().enumerate() {
            tracing::info!(include = ?src.include, "tailing files");
            let mut tailer =
                sources::file::FileTailer::new(src.clone(), base.clone(), file_cps.clone());
            if let Some(m) = &cfg.templates {
                let key = format!("files:{}", src.include.join("\n"));
                let path = pipeline::template::state_path(&cfg.state_dir, &key);
                tailer = tailer.with_miner(pipeline::template::SourceMiner::new(
                    m.clone(),
                    &format!("files[{i}]"),
                    Some(path),
                ));
            }
            let (tx, root, gauges) = (tx.clone(), shutdown.clone(), gauges.clone());
            let h = out
                .stage
                .spawn_thread(&format!("file-source-{i}"), move |stop| {
                    sources::file::run(tailer, tx, gauges, root, stop)
                })
                .map_err(|e| Error::Thread("file source", e))?;
            out.files.push(h);
        }
        Ok(out)
    }

    /// Stops every source once it has handed on what it read; returns where each
    /// stood (ahead of the spool: what they sent is still on its way there).
    async fn stop(self) -> Vec<Checkpoint> {
        self.stage.token().cancel();
        let mut out = Vec::new();
        if let Some(h) = self.journal {
            if let Ok(r) = h.await {
                out.extend(r.position());
            }
        }
        for h in self.files {
            if let Ok(t) = h.await {
                out.extend(t.checkpoints());
            }
        }
        out
    }
}

/// Records `c` unless a newer position of the same file or journal is known.
fn keep_newest(positions: &mut Positions, c: Checkpoint) {
    match positions.get(&c.key) {
        Some(old) if old.updated_ns > c.updated_ns => {}
        _ => {
            positions.insert(c);
        }
    }
}

/// Checks the TLS files at start. A missing or expired certificate is reported and
/// the agent runs on, spooling: a package installs and starts the agent before it is
/// enrolled, and certificates put in place later are read at the next connection
/// attempt (or at once after SIGHUP). Any other problem (a file that is not PEM, a key
/// that is not a key) stops the start.
fn check_tls_at_start(tls: &heimdall_common::tls::TlsFiles) -> Result<(), Error> {
    use heimdall_common::tls::{self, Error as TlsError};
    let missing = |e: &TlsError| matches!(e, TlsError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    let checked = tls::check_own_certificate(&tls.cert).and_then(|info| {
        tls::load_certs(&tls.ca)?;
        tls::load_key(&tls.key)?;
        Ok(info)
    });
    match checked {
        Ok(info) => {
            tracing::info!(
                identity = info.common_name.as_deref().unwrap_or("?"),
                "agent certificate loaded"
            );
            metrics::gauge!("heimdall_agent_certificate_expiry_timestamp_seconds")
                .set(info.not_after as f64);
            Ok(())
        }
        Err(e @ TlsError::NotValidNow { .. }) => {
            tracing::error!(error = %e, "agent certificate is not valid now; spooling until it is renewed");
            Ok(())
        }
        Err(e) if missing(&e) => {
            tracing::error!(error = %e, "agent certificate files are not in place yet (see heimdall-aggregator issue-agent-cert); spooling until they are");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// After a reload (SIGHUP): hands the shipper the new output settings, which makes it
/// reconnect with the certificate files read again. When they do not make a working
/// TLS configuration, the running connection is kept and the problem logged.
fn reload_output(new: &ship::ShipConfig, updates: &tokio::sync::watch::Sender<ship::ShipConfig>) {
    match heimdall_common::tls::client_config(&new.tls) {
        Ok(_) => {
            if let Ok(info) = heimdall_common::tls::check_own_certificate(&new.tls.cert) {
                metrics::gauge!("heimdall_agent_certificate_expiry_timestamp_seconds")
                    .set(info.not_after as f64);
            }
            updates.send_replace(new.clone());
        }
        Err(e) => tracing::error!(
            error = %e,
            "the reloaded certificates do not make a TLS configuration; keeping the running connection"
        ),
    }
}

/// Runs the agent until `shutdown` is cancelled, then drains. A configuration sent
/// on `reload` (SIGHUP) replaces the sources; file positions and the journal cursor
/// carry over.
///
/// # Errors
/// [`Error`] for structural failures at start.
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    mut reload: tokio::sync::watch::Receiver<Option<AgentConfig>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<(), Error> {
    let health = Arc::new(http::Health::default());
    // The metrics endpoint and the housekeeping tick stop when the shutdown begins.
    let service = Stage::child_of("service", &shutdown);
    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::MetricsListen { addr, source })?;
        tracing::info!(%addr, "serving /metrics, /ready and /live");
        service.spawn(http::serve(
            listener,
            metrics,
            health.clone(),
            service.token(),
        ));
    }
    check_tls_at_start(&cfg.ship.tls)?;
    let systemd = heimdall_common::systemd::Notifier::from_env();

    let spool_dir = cfg.state_dir.join("spool");
    let limits = cfg.spool;
    let dir = spool_dir.clone();
    let recovered = tokio::task::spawn_blocking(move || spool::Spool::open(&dir, limits))
        .await
        .expect("spool open task does not panic")?;
    if recovered.lost_entries > 0 {
        metrics::counter!("heimdall_agent_spool_lost_entries_total")
            .increment(recovered.lost_entries);
    }
    let spool = Arc::new(recovered.spool);
    let st = spool.stats();
    tracing::info!(
        spool = %spool_dir.display(),
        pending_batches = st.batches,
        checkpoints = recovered.checkpoints.len(),
        "spool opened"
    );

    let gauges = Arc::new(sources::Gauges::default());
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNK_CHANNEL);
    let mut sources = Sources::start(&cfg, &recovered.checkpoints, &tx, &gauges, &shutdown)?;
    // Where every source stood at its last stop (recovered ones at first), so that a
    // source removed by one reload and added back by another resumes where it was.
    let mut positions: Positions = recovered.checkpoints.iter().cloned().collect();
    let mut current = cfg.clone();
    // Anomaly events go ahead of the batches that carry them, on their own stream.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
    let batcher = pipeline::batch::Batcher::new(cfg.batch_max_bytes, cfg.batch_max_records)
        .with_intel(
            cfg.aggregate_window,
            Some(pipeline::anomaly::Detector::new(cfg.anomaly.clone())),
        )
        .with_detector_state(cfg.state_dir.join("anomaly-baselines.json"));
    // The batcher ends when the sources are gone (its channel closes).
    let batching = Stage::new("batching");
    batching.spawn(pipeline::batch::run(
        rx,
        spool.clone(),
        batcher,
        cfg.batch_timeout,
        Some(events_tx),
    ));
    // The shipper runs on while the shutdown drains the spool.
    let shipping = Stage::new("shipping");
    let shipper = ship::Shipper {
        cfg: cfg.ship.clone(),
        spool: spool.clone(),
        gauges: gauges.clone(),
        events: Arc::new(tokio::sync::Mutex::new(events_rx)),
    };
    let (ship_tx, ship_rx) = tokio::sync::watch::channel(cfg.ship.clone());
    shipping.spawn(shipper.run(shipping.token(), ship_rx));
    {
        let spool = spool.clone();
        let token = service.token();
        let systemd = systemd.clone();
        let health = health.clone();
        let gauges = gauges.clone();
        service.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut pinged = Instant::now();
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                ticks += 1;
                let s = spool.clone();
                match tokio::task::spawn_blocking(move || {
                    // `dead-letter resend` may have moved batches out meanwhile.
                    if ticks % 10 == 0 {
                        s.recount_dead_letters();
                    }
                    let r = s.flush_state();
                    (r, s.stats())
                })
                .await
                {
                    Ok((Err(e), _)) => tracing::error!(error = %e, "cannot write spool state"),
                    Ok((Ok(()), st)) => {
                        metrics::gauge!("heimdall_agent_spool_batches").set(st.batches as f64);
                        metrics::gauge!("heimdall_agent_spool_lag_seconds")
                            .set(st.oldest_age_ns as f64 / 1e9);
                    }
                    Err(_) => {}
                }
                health.tick();
                health.connected.store(
                    gauges.connected.load(std::sync::atomic::Ordering::Relaxed),
                    std::sync::atomic::Ordering::Relaxed,
                );
                // The watchdog is fed from here: the runtime, the blocking pool and the
                // spool's state file all answered this second.
                if let Some(wd) = systemd.watchdog() {
                    if pinged.elapsed() >= wd / 2 {
                        systemd.ping();
                        pinged = Instant::now();
                    }
                }
            }
        });
    }
    health.tick();
    health
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    systemd.ready(&format!(
        "tailing {} file sources{}, shipping to {}",
        cfg.files.len(),
        if cfg.journald.is_some() {
            " and the journal"
        } else {
            ""
        },
        cfg.ship.endpoints.join(", ")
    ));

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = reload.changed() => {
                if changed.is_err() {
                    shutdown.cancelled().await;
                    break;
                }
                // Several SIGHUPs during one reload leave only the newest configuration.
                let Some(new) = reload.borrow_and_update().clone() else {
                    continue;
                };
                // Stop the sources after they have handed on everything they read,
                // then start the new ones where the old ones stood.
                // (At shutdown the sources end anyway, so this cannot hang it.)
                for c in sources.stop().await {
                    keep_newest(&mut positions, c);
                }
                let now: Vec<Checkpoint> = positions.to_vec();
                metrics::counter!("heimdall_agent_reloads_total").increment(1);
                match Sources::start(&new, &now, &tx, &gauges, &shutdown) {
                    Ok(s) => {
                        tracing::info!(files = new.files.len(), journald = new.journald.is_some(), "sources reloaded");
                        sources = s;
                        reload_output(&new.ship, &ship_tx);
                        current = new;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the reloaded sources; keeping the previous ones");
                        sources = Sources::start(&current, &now, &tx, &gauges, &shutdown)?;
                    }
                }
            }
        }
    }
    drop(tx);
    health
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    systemd.stopping("draining the pipeline into the spool");
    let deadline = Instant::now() + cfg.shutdown_grace;
    tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: draining the pipeline into the spool");
    let _ = tokio::time::timeout_at(deadline.into(), sources.stop()).await;
    if !batching
        .wait(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        tracing::warn!("pipeline did not drain within the grace period; unspooled lines are read again at the next start");
    }
    while spool.stats().batches > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = spool.stats().batches;
    shipping.stop(Duration::from_secs(3)).await;
    service.stop(Duration::from_secs(3)).await;
    spool.close();
    let s = spool.clone();
    let _ = tokio::task::spawn_blocking(move || s.flush_state()).await;
    tracing::info!(batches_left_in_spool = left, "agent stopped");
    Ok(())
}
