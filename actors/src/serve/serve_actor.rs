//! ServeActor: the shell of online inference on every node. Requests from this node's
//! HTTP endpoint wait in a per-model [`Queue`] (the dynamic batcher); a batch goes to the
//! live node with the fewest serving batches in flight (this node first on a tie) and runs
//! on that node's ModelActor, between the job batches queued there. Batches from other
//! nodes' endpoints run here the same way. Runs on the main arbiter: it only moves
//! messages; decoding and the forward pass happen on the ModelActor's thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::clock;
use crate::control::Command;
use crate::jobs::coordinator_actor::{self, CoordinatorActor};
use crate::jobs::model_actor::ModelActor;
use crate::membership::membership_actor::View;
use crate::metrics;
use crate::net::body::Body;
use crate::net::transport::Transport;
use crate::net::wire::Lane;
use crate::serve::batcher::{Pending, Queue};
use crate::serve::exec::RunItems;
use crate::serve::msg::{Item, Msg, RunOutput};
use crate::types::{Millis, NodeAddr};

/// Knobs of the batcher.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The longest a request waits for others to fill its batch (Triton's
    /// `max_queue_delay_microseconds`).
    pub max_delay_ms: Millis,
    /// Items queued per model before requests are refused (503).
    pub max_queue: usize,
    /// The most input bytes in one batch message (frames are at most 16 MiB).
    pub max_batch_bytes: usize,
    /// Serving batches in flight per node and model: 2, so the next batch waits in the
    /// model's mailbox while one computes.
    pub per_node: usize,
    /// A batch not answered within this is failed (504) and its node's slot freed.
    pub run_timeout_ms: Millis,
    /// How often the C3 batch sizes are asked of the coordinator.
    pub sizes_every: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            max_delay_ms: 5,
            max_queue: 1024,
            max_batch_bytes: 12 << 20,
            per_node: 2,
            run_timeout_ms: 60_000,
            sizes_every: Duration::from_secs(2),
        }
    }
}

/// Why a request got no logits; each maps to one HTTP status.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ServeError {
    /// An input could not be used (not an image, wrong size): 400.
    #[error("{0}")]
    BadInput(String),
    /// The model's queue is full: 503.
    #[error("{0}")]
    Busy(String),
    /// No node could run it, or the forward pass failed: 500.
    #[error("{0}")]
    Failed(String),
    /// No answer in time: 504.
    #[error("{0}")]
    Timeout(String),
}

/// The answer to one [`Infer`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// One row of logits per input item.
    pub logits: Vec<Vec<f32>>,
    pub synthetic: bool,
    /// The node that ran it.
    pub node: NodeAddr,
}

/// A request from this node's HTTP endpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Infer {
    pub model: String,
    pub items: Vec<Item>,
    pub reply: oneshot::Sender<Result<Answer, ServeError>>,
}

/// An online-inference message from another node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: Msg,
}

struct Req {
    items: Vec<Item>,
    reply: oneshot::Sender<Result<Answer, ServeError>>,
    tries: u32,
}

struct Flight {
    node: NodeAddr,
    model: String,
    reqs: Vec<Pending<Req>>,
    sent: Millis,
}

/// The actor.
pub struct ServeActor {
    me: NodeAddr,
    transport: Transport<Body>,
    models: HashMap<String, Addr<ModelActor>>,
    coordinator: Option<Addr<CoordinatorActor>>,
    settings: ServeSettings,
    live: Vec<NodeAddr>,
    queues: HashMap<String, Queue<Req>>,
    sizes: HashMap<String, usize>,
    flights: HashMap<u64, Flight>,
    next_id: u64,
    rotate: usize,
    armed: HashMap<String, Millis>,
    /// Whether this node is in the cluster, for the HTTP endpoint's readiness.
    ready: Arc<AtomicBool>,
}

/// Tries a batch gets on nodes that vanished before it is failed.
const MAX_TRIES: u32 = 3;

impl ServeActor {
    /// The serving shell of node `me`, with its ModelActors; `sizes` are the batch sizes
    /// until the coordinator tells the C3 ones.
    pub fn new(
        me: NodeAddr,
        transport: Transport<Body>,
        models: HashMap<String, Addr<ModelActor>>,
        coordinator: Option<Addr<CoordinatorActor>>,
        sizes: HashMap<String, usize>,
        settings: ServeSettings,
        ready: Arc<AtomicBool>,
    ) -> Self {
        ServeActor {
            live: vec![me.clone()],
            me,
            transport,
            models,
            coordinator,
            settings,
            queues: HashMap::new(),
            sizes,
            flights: HashMap::new(),
            next_id: 1,
            rotate: 0,
            armed: HashMap::new(),
            ready,
        }
    }

    fn batch_size(&self, model: &str) -> usize {
        self.sizes.get(model).copied().unwrap_or(8).max(1)
    }

    fn in_flight(&self, node: &NodeAddr, model: &str) -> usize {
        self.flights
            .values()
            .filter(|f| &f.node == node && f.model == model)
            .count()
    }

    /// The live node with the fewest of `model`'s batches in flight and a free slot; this
    /// node first on a tie, then the others from a rotating start.
    fn pick(&mut self, model: &str) -> Option<NodeAddr> {
        let n = self.live.len().max(1);
        let start = self.rotate % n;
        let order = self
            .live
            .iter()
            .cycle()
            .skip(start)
            .take(self.live.len())
            .filter(|a| **a != self.me);
        let mut best: Option<(usize, NodeAddr)> = None;
        for a in std::iter::once(&self.me).chain(order) {
            let busy = self.in_flight(a, model);
            if busy < self.settings.per_node && best.as_ref().is_none_or(|(b, _)| busy < *b) {
                best = Some((busy, a.clone()));
            }
        }
        self.rotate = self.rotate.wrapping_add(1);
        best.map(|(_, a)| a)
    }

    /// Cuts and sends every batch that is ready and has a node; arms the queue's deadline
    /// otherwise.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = clock::now();
        let models: Vec<String> = self.queues.keys().cloned().collect();
        for model in models {
            let batch = self.batch_size(&model);
            while let Some(q) = self.queues.get(&model) {
                if q.items() == 0 || !q.ready(now, batch, self.settings.max_delay_ms) {
                    break;
                }
                let Some(node) = self.pick(&model) else { break };
                let Some(q) = self.queues.get_mut(&model) else {
                    break;
                };
                let reqs = q.cut(batch, self.settings.max_batch_bytes);
                self.dispatch(node, model.clone(), reqs, ctx);
            }
            let deadline = self
                .queues
                .get(&model)
                .and_then(|q| q.deadline(self.settings.max_delay_ms));
            if let Some(at) = deadline.filter(|at| *at > now) {
                if self.armed.get(&model).is_none_or(|a| *a <= now || *a > at) {
                    self.armed.insert(model.clone(), at);
                    ctx.run_later(clock::until(at), |act, ctx| act.pump(ctx));
                }
            }
        }
    }

    fn dispatch(
        &mut self,
        node: NodeAddr,
        model: String,
        reqs: Vec<Pending<Req>>,
        ctx: &mut Context<Self>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let items: Vec<Item> = reqs
            .iter()
            .flat_map(|p| p.req.items.iter().cloned())
            .collect();
        metrics::serve_batch(&model, items.len());
        let now = clock::now();
        for p in &reqs {
            metrics::serve_queue_ms(&model, now.saturating_sub(p.since) as f64);
        }
        self.flights.insert(
            id,
            Flight {
                node: node.clone(),
                model: model.clone(),
                reqs,
                sent: now,
            },
        );
        if node == self.me {
            self.run_local(model, items, ctx, move |act, out, ctx| {
                act.done(id, out, ctx)
            });
            return;
        }
        let msg = Body::Serve(Msg::Run { id, model, items });
        if let Err(e) = self.transport.send(&node, Lane::Bulk, msg) {
            debug!(peer = %node, "serving batch not sent: {e}");
            self.retry(id, ctx);
        }
    }

    /// Runs `items` on this node's `model` and hands the outcome to `then`.
    fn run_local(
        &mut self,
        model: String,
        items: Vec<Item>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Result<RunOutput, String>, &mut Context<Self>) + 'static,
    ) {
        let Some(addr) = self.models.get(&model).cloned() else {
            then(self, Err(format!("no model {model} on {}", self.me)), ctx);
            return;
        };
        let fut = async move {
            match addr.send(RunItems { items }).await {
                Ok(r) => r,
                Err(e) => Err(format!("model {model}: {e}")),
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |out, act, ctx| then(act, out, ctx)),
        );
    }

    /// Puts a batch whose node is gone back at the head of its queue (or fails requests
    /// that have had their tries).
    fn retry(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(f) = self.flights.remove(&id) else {
            return;
        };
        let mut back = Vec::new();
        for mut p in f.reqs {
            p.req.tries += 1;
            if p.req.tries >= MAX_TRIES {
                metrics::serve_failure(&f.model);
                let _ = p.req.reply.send(Err(ServeError::Failed(format!(
                    "no node could run the batch ({} tries; last {})",
                    p.req.tries, f.node
                ))));
            } else {
                back.push(p);
            }
        }
        if let Some(q) = self.queues.get_mut(&f.model) {
            q.requeue(back);
        }
        self.pump(ctx);
    }

    fn done(&mut self, id: u64, out: Result<RunOutput, String>, ctx: &mut Context<Self>) {
        let Some(f) = self.flights.remove(&id) else {
            return;
        };
        let now = clock::now();
        match out {
            Ok(out) => {
                metrics::serve_compute_ms(&f.model, out.compute_ms);
                let mut rows = out.items.into_iter();
                for p in f.reqs {
                    let mine: Vec<Result<Vec<f32>, String>> = rows.by_ref().take(p.items).collect();
                    let answer = answer_of(mine, out.synthetic, &f.node);
                    metrics::serve_done(
                        &f.model,
                        answer.is_ok(),
                        now.saturating_sub(p.since) as f64,
                    );
                    let _ = p.req.reply.send(answer);
                }
            }
            Err(e) => {
                warn!(node = %f.node, model = %f.model, "serving batch failed: {e}");
                for p in f.reqs {
                    metrics::serve_done(&f.model, false, now.saturating_sub(p.since) as f64);
                    let _ = p
                        .req
                        .reply
                        .send(Err(ServeError::Failed(format!("{}: {e}", f.node))));
                }
            }
        }
        self.pump(ctx);
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = clock::now();
        let late: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.sent) > self.settings.run_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(f) = self.flights.remove(&id) {
                for p in f.reqs {
                    metrics::serve_done(&f.model, false, now.saturating_sub(p.since) as f64);
                    let _ = p.req.reply.send(Err(ServeError::Timeout(format!(
                        "{} did not answer within {} ms",
                        f.node, self.settings.run_timeout_ms
                    ))));
                }
            }
        }
        // Requests whose client went away still run: their batch may be on the way.
        self.pump(ctx);
    }

    fn ask_sizes(&mut self, ctx: &mut Context<Self>) {
        let Some(coord) = self.coordinator.clone() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        coord.do_send(coordinator_actor::Exec {
            cmd: Command::C5,
            reply: tx,
        });
        let fut = async move { rx.await.ok().and_then(|o| o.ok()) };
        ctx.spawn(fut.into_actor(self).map(|reply, act, _| {
            let Some(reply) = reply else { return };
            if let Some(sizes) = parse_sizes(&reply.json) {
                act.sizes.extend(sizes);
            }
        }));
    }
}

/// `batch_sizes` out of C5's JSON.
fn parse_sizes(json: &str) -> Option<HashMap<String, usize>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let map = v.get("batch_sizes")?.as_object()?;
    Some(
        map.iter()
            .filter_map(|(m, b)| Some((m.clone(), usize::try_from(b.as_u64()?).ok()?)))
            .collect(),
    )
}

/// One request's answer from its rows: the first bad item fails the request (400).
fn answer_of(
    rows: Vec<Result<Vec<f32>, String>>,
    synthetic: bool,
    node: &NodeAddr,
) -> Result<Answer, ServeError> {
    let mut logits = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        match r {
            Ok(l) => logits.push(l),
            Err(e) => return Err(ServeError::BadInput(format!("input element {i}: {e}"))),
        }
    }
    Ok(Answer {
        logits,
        synthetic,
        node: node.clone(),
    })
}

impl Actor for ServeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.sweep(ctx));
        self.ask_sizes(ctx);
        ctx.run_interval(self.settings.sizes_every, |act, ctx| act.ask_sizes(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        for q in self.queues.values_mut() {
            for p in q.drain() {
                let _ = p
                    .req
                    .reply
                    .send(Err(ServeError::Failed("the node is shutting down".into())));
            }
        }
    }
}

impl Handler<Infer> for ServeActor {
    type Result = ();
    fn handle(&mut self, m: Infer, ctx: &mut Context<Self>) {
        let Infer {
            model,
            items,
            reply,
        } = m;
        if !self.models.contains_key(&model) {
            let _ = reply.send(Err(ServeError::BadInput(format!("unknown model {model}"))));
            return;
        }
        let p = Pending {
            items: items.len(),
            bytes: items.iter().map(Item::size).sum(),
            since: clock::now(),
            req: Req {
                items,
                reply,
                tries: 0,
            },
        };
        let cap = self.settings.max_queue;
        let q = self
            .queues
            .entry(model.clone())
            .or_insert_with(|| Queue::new(cap));
        if let Err((_, p)) = q.push(p) {
            metrics::serve_failure(&model);
            let _ = p.req.reply.send(Err(ServeError::Busy(format!(
                "{model}: {cap} inputs are queued already; try again later"
            ))));
            return;
        }
        self.pump(ctx);
    }
}

impl Handler<View> for ServeActor {
    type Result = ();
    fn handle(&mut self, v: View, ctx: &mut Context<Self>) {
        metrics::members(&v);
        self.ready.store(v.joined, Ordering::Relaxed);
        self.live = if v.joined {
            v.live()
        } else {
            vec![self.me.clone()]
        };
        let gone: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| !self.live.contains(&f.node))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.retry(id, ctx);
        }
        self.pump(ctx);
    }
}

impl Handler<FromPeer> for ServeActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        match m.msg {
            Msg::Run { id, model, items } => {
                let from = m.from;
                self.run_local(model, items, ctx, move |act, out, _| {
                    let body = Body::Serve(Msg::Done { id, out });
                    if let Err(e) = act.transport.send(&from, Lane::Bulk, body) {
                        debug!(peer = %from, "serving answer not sent: {e}");
                    }
                });
            }
            Msg::Done { id, out } => {
                // Only the node the batch went to may answer it.
                if self.flights.get(&id).is_some_and(|f| f.node == m.from) {
                    self.done(id, out, ctx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_come_from_c5() {
        let json = r#"{"nodes":[],"shares":[],"batch_sizes":{"resnet50":16,"inception_v3":4}}"#;
        let s = parse_sizes(json).expect("sizes");
        assert_eq!(s.get("resnet50"), Some(&16));
        assert_eq!(s.get("inception_v3"), Some(&4));
        assert_eq!(parse_sizes(r#"{"nodes":[]}"#), None);
    }

    #[test]
    fn a_bad_item_fails_its_request_only() {
        let node = NodeAddr::new("127.0.0.1", 1);
        let ok = answer_of(vec![Ok(vec![1.0]), Ok(vec![2.0])], false, &node).expect("ok");
        assert_eq!(ok.logits.len(), 2);
        let bad = answer_of(
            vec![Ok(vec![1.0]), Err("not an image".into())],
            false,
            &node,
        );
        assert_eq!(
            bad.err(),
            Some(ServeError::BadInput("input element 1: not an image".into()))
        );
    }
}
