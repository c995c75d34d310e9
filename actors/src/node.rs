//! Node assembly: binds the listener, starts the transport and the node's actors on one
//! actix system, and runs until Ctrl-C or SIGTERM (a node leaves the cluster first).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dml_models::Network;

use actix::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

use crate::config::Config;
use crate::jobs::coordinator_actor::CoordinatorActor;
use crate::jobs::model_actor::{ModelActor, WeightSource};
use crate::jobs::node_weights::NodeWeights;
use crate::jobs::outbox::Outbox;
use crate::jobs::worker_actor::WorkerActor;
use crate::jobs::JobsConfig;
use crate::membership::introducer::{Introducer, IntroducerSettings};
use crate::membership::membership_actor::{Exec, MembershipActor, Subscribe};
use crate::membership::ping::ProbeSettings;
use crate::membership::{Membership, Settings};
use crate::net::body::Body;
use crate::net::transport::{Transport, TransportConfig};
use crate::net::transport_actor::{Routes, TransportActor};
use crate::sdfs::client::SdfsClient;
use crate::sdfs::sdfs_actor::SdfsActor;
use crate::serve::http::HttpContext;
use crate::serve::serve_actor::{ServeActor, ServeSettings};
use crate::types::NodeAddr;
use crate::weights::Serving;

/// Why a node or the introducer could not run.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: NodeAddr,
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] crate::net::transport::TransportError),
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("introducer: {0}")]
    Introducer(#[from] crate::membership::introducer::IntroducerError),
    #[error("model: {0}")]
    Model(String),
    #[error("sdfs: {0}")]
    Sdfs(String),
    #[error("{0}")]
    Http(String),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

fn transport_config(config: &Config, me: &NodeAddr) -> TransportConfig {
    let mut t = crate::net::security::transport_config(config, me);
    t.drop_rate = config.fd.drop_rate;
    t.drop_seed = crate::clock::wall_ms();
    t
}

async fn bind(addr: &NodeAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr.as_str())
        .await
        .map_err(|source| NodeError::Bind {
            addr: addr.clone(),
            source,
        })
}

/// Wall-clock ms at which the monotonic clock read 0: the cores' bound on plausible
/// incarnations follows the wall clock through it.
fn wall_origin() -> u64 {
    crate::clock::wall_ms().saturating_sub(crate::clock::now())
}

/// Settings of the membership core from the config.
pub fn membership_settings(config: &Config) -> Settings {
    let mut s = Settings::new(
        config.ring(),
        config.fd.m,
        ms(config.fd.ping_duration),
        ms(config.fd.cleanup_time),
        Some(config.introducer.clone()),
    );
    s.topology = config.topology.clone();
    s.suspicion = config.fd.suspicion;
    s.wall_origin = wall_origin();
    s
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// What the ModelActors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Models {
    /// ResNet-50 and Inception-v3 (weights from `weights/`, or synthetic).
    Networks,
    /// `dml bench scale`'s fixed-logits stand-in under both names (`dml node
    /// --bench-fixed-logits`, passed only by `dml bench`; no config key selects it).
    BenchFixedLogits,
}

/// One ModelActor per network, and what the node serves for each.
type Started = (HashMap<String, Addr<ModelActor>>, BTreeMap<String, Serving>);

/// Decides what the node serves per network and loads its own weights (a bad local
/// file stops the node), then starts one ModelActor per network on its own SyncArbiter
/// thread. A network without a local file runs the versions published in SDFS, fetched
/// when needed; synthetic weights only where the config allows them.
fn start_models(config: &Config, which: Models) -> Result<Started, NodeError> {
    let mut models = HashMap::new();
    let mut serving = BTreeMap::new();
    for network in Network::ALL {
        let (actor, serves) = match which {
            Models::Networks => model_for(config, network)?,
            Models::BenchFixedLogits => {
                warn!(
                    network = network.name(),
                    "BENCHMARK node: fixed logits instead of the network (dml bench scale)"
                );
                (
                    ModelActor::fixed_logits(),
                    Serving::Cluster { synthetic: true },
                )
            }
        };
        let addr = SyncArbiter::start(1, move || actor.clone());
        models.insert(network.name().to_string(), addr);
        serving.insert(network.name().to_string(), serves);
    }
    Ok((models, serving))
}

/// The ModelActor of `network` and what it serves (see [`start_models`]).
fn model_for(config: &Config, network: Network) -> Result<(ModelActor, Serving), NodeError> {
    let dir = &config.weights_dir;
    let threads = config.threads;
    if let Ok(file) = dml_models::weights::find_weight_file(network, dir) {
        let sha256 = dml_models::weights::sha256_file(&file)
            .map_err(|e| NodeError::Model(format!("{}: {e}", file.display())))?;
        let source = WeightSource::Dir(dir.clone());
        let actor = ModelActor::load(
            network,
            &source,
            threads,
            Some(sha256.clone()),
            config.precision,
        )
        .map_err(NodeError::Model)?;
        info!(
            network = network.name(),
            file = %file.display(),
            %sha256,
            "local weights: this node serves only them (jobs pinned to another version go \
             to other nodes)"
        );
        return Ok((actor, Serving::Local { sha256 }));
    }
    if config.synthetic_weights {
        warn!(
            network = network.name(),
            "SYNTHETIC weights (inference.synthetic_weights / --synthetic-weights) while \
             nothing is published: predictions are meaningless"
        );
        let actor = ModelActor::load(
            network,
            &WeightSource::Synthetic(0),
            threads,
            None,
            config.precision,
        )
        .map_err(NodeError::Model)?;
        return Ok((actor, Serving::Cluster { synthetic: true }));
    }
    warn!(
        network = network.name(),
        dir = %dir.display(),
        "no local weight file: serving {network} only from the versions published in SDFS \
         (publish once with `dml weights publish {network} FILE`, or copy a file into the \
         weights directory)"
    );
    Ok((
        ModelActor::published_only(network, threads, config.precision).map_err(NodeError::Model)?,
        Serving::Cluster { synthetic: false },
    ))
}

/// Starts the node's ServeActor (every node runs the batches other nodes' endpoints send)
/// and, when the node has an `http` address, its HTTP endpoint.
fn start_serving(
    config: &Config,
    me: &NodeAddr,
    transport: &Transport<Body>,
    models: &HashMap<String, Addr<ModelActor>>,
    coordinator: Addr<CoordinatorActor>,
) -> Result<Addr<ServeActor>, NodeError> {
    let coordinator_for_http = coordinator.clone();
    let jobs = JobsConfig::default();
    let sizes = jobs
        .models
        .iter()
        .map(|m| (m.name.clone(), m.batch_size as usize))
        .collect();
    let settings = ServeSettings {
        max_delay_ms: config.http.max_queue_delay_ms,
        ..ServeSettings::default()
    };
    let timeout = Duration::from_millis(settings.run_timeout_ms + 5_000);
    let ready = Arc::new(AtomicBool::new(false));
    let serve = ServeActor::new(
        me.clone(),
        transport.clone(),
        models.clone(),
        Some(coordinator),
        sizes,
        settings,
        ready.clone(),
    )
    .start();
    if let Some(addr) = config.node(me).and_then(|n| n.http) {
        if config.http.token.is_none() {
            warn!(http = %addr, "the http endpoint has no token ([http] token_file): anyone who can reach it can run inference");
        }
        let ctx = HttpContext {
            node: me.clone(),
            serve: serve.clone(),
            coordinator: coordinator_for_http,
            transport: transport.clone(),
            ready,
            token: config.http.token.clone().map(Arc::new),
            max_body: config.http.max_body,
            timeout,
            tls: config.http.tls.clone(),
        };
        crate::serve::http::spawn(addr, ctx).map_err(NodeError::Http)?;
    }
    Ok(serve)
}

/// Runs the node `me` until a shutdown signal.
pub fn run_node(config: Config, me: NodeAddr, which: Models) -> Result<(), NodeError> {
    if config.sample_keys {
        warn!(
            "SAMPLE operator keys ([security] sample_keys = true): anyone with the dml \
             repository can act as an operator of this cluster; generate your own keys for a \
             deployment (README, Security)"
        );
    }
    // Before any actor records a metric.
    crate::metrics::install();
    let system = System::new();
    system.block_on(async move {
        let listener = bind(&me).await?;
        let (transport, inbound) =
            Transport::<Body>::start(listener, transport_config(&config, &me))?;
        let core = Membership::new(
            me.clone(),
            membership_settings(&config),
            crate::clock::wall_ms(),
        )?;
        let probe = ProbeSettings {
            ping_duration: ms(config.fd.ping_duration),
            ping_timeout: ms(config.fd.ping_timeout),
        };
        // SDFS blocks on fsync: it gets its own thread so pings are never queued behind it.
        let sdfs_actor =
            SdfsActor::new(&config, me.clone(), transport.clone()).map_err(NodeError::Sdfs)?;
        let sdfs_arbiter = Arbiter::new();
        let sdfs = SdfsActor::start_in_arbiter(&sdfs_arbiter.handle(), move |_| sdfs_actor);
        let (models, serving) = start_models(&config, which)?;
        let cache = config
            .node(&me)
            .map(|spec| config.node_data_dir(spec))
            .unwrap_or_else(|| config.data_dir.join(me.as_str()))
            .join("weights-cache");
        let weights = Arc::new(NodeWeights::new(cache, serving));
        // The job actors reach each other through one outbox holding both as recipients,
        // so both addresses exist before either actor starts.
        let coord_ctx = Context::<CoordinatorActor>::new();
        let worker_ctx = Context::<WorkerActor>::new();
        let coordinator = coord_ctx.address();
        let outbox = Outbox::new(
            me.clone(),
            transport.clone(),
            worker_ctx.address().recipient(),
            coordinator.clone().recipient(),
        );
        let sdfs_client = SdfsClient::new(sdfs.clone());
        let serve = start_serving(&config, &me, &transport, &models, coordinator.clone())?;
        let worker = worker_ctx.run(WorkerActor::new(
            outbox.clone(),
            sdfs_client.clone(),
            models,
            weights,
        ));
        coord_ctx.run(CoordinatorActor::new(
            outbox,
            JobsConfig::default(),
            sdfs_client,
            config.ring(),
            Duration::from_secs(2),
        ));
        let t = transport.clone();
        let membership = Supervisor::start(move |_| MembershipActor::new(core, t, probe, true));
        membership.do_send(Subscribe(sdfs.clone().recipient()));
        membership.do_send(Subscribe(coordinator.clone().recipient()));
        membership.do_send(Subscribe(serve.clone().recipient()));
        let routes = Routes {
            membership: membership.clone(),
            sdfs: sdfs.clone(),
            coordinator,
            worker,
            serve,
        };
        TransportActor::new(inbound, routes).start();
        info!(node = %me, "node started");

        shutdown_signal().await;
        info!(node = %me, "shutting down: leaving the cluster");
        let (tx, rx) = tokio::sync::oneshot::channel();
        membership.do_send(Exec {
            cmd: crate::control::Command::Leave,
            reply: tx,
        });
        let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
        // Give the leave broadcast a moment on the wire.
        tokio::time::sleep(Duration::from_millis(200)).await;
        transport.shutdown();
        Ok::<(), NodeError>(())
    })
}

/// Runs the introducer until a shutdown signal.
pub fn run_introducer(config: Config) -> Result<(), NodeError> {
    let system = System::new();
    system.block_on(async move {
        let me = config.introducer.clone();
        let listener = bind(&me).await?;
        let (transport, inbound) =
            Transport::<Body>::start(listener, transport_config(&config, &me))?;
        let announce = ms(config.fd.ping_duration) * 4;
        let mut settings = IntroducerSettings::new(
            config.ring(),
            announce * 3 + ms(config.fd.cleanup_time),
            announce,
        );
        settings.wall_origin = wall_origin();
        let core = Introducer::new(settings)?;
        crate::membership::introducer_actor::IntroducerActor::new(core, transport.clone(), inbound)
            .start();
        info!(introducer = %me, "introducer started");
        shutdown_signal().await;
        transport.shutdown();
        Ok::<(), NodeError>(())
    })
}
