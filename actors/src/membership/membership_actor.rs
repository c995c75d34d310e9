//! MembershipActor: the thin shell around the [`Membership`] core. It feeds the core
//! messages, timer fires and prober reports, executes its effects (sends on the control
//! lane, timers, logs) and keeps one PingActor per monitored peer.

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::control::{Command, Outcome, Reply};
use crate::membership::{Effect, Member, MemberEvent, Membership, Msg, Status, Timer};
use crate::net::body::Body;
use crate::membership::ping::ProbeSettings;
use crate::membership::ping_actor::PingActor;
use crate::net::transport::Transport;
use crate::types::{Millis, NodeAddr};
use crate::net::wire::Lane;

/// Pause between the start-up join's attempts while the introducer does not answer.
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A membership message from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: Msg,
}

/// A PingActor asks for a ping (the core adds piggybacked updates).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendPing {
    pub peer: NodeAddr,
    pub seq: u64,
}

/// A PingActor's probe went unanswered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unresponsive {
    pub peer: NodeAddr,
}

/// A membership console command; the outcome goes to `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Exec {
    pub cmd: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// The live members, pushed to subscribers after every change.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct View {
    pub me: NodeAddr,
    pub members: Vec<Member>,
}

impl View {
    /// Addresses of the live members (alive or suspect), this node included, sorted.
    pub fn live(&self) -> Vec<NodeAddr> {
        let mut live: Vec<NodeAddr> = self
            .members
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    crate::membership::MemberState::Alive | crate::membership::MemberState::Suspect
                )
            })
            .map(|m| m.addr.clone())
            .collect();
        live.push(self.me.clone());
        live.sort();
        live.dedup();
        live
    }
}

/// Subscribe to [`View`] updates.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<View>);

pub struct MembershipActor {
    core: Membership,
    transport: Transport<Body>,
    probe: ProbeSettings,
    pingers: HashMap<NodeAddr, Addr<PingActor>>,
    next_token: u64,
    pending_join: Vec<oneshot::Sender<Outcome>>,
    subscribers: Vec<Recipient<View>>,
    /// Join as soon as the actor starts (a node process does; tests may not).
    auto_join: bool,
    /// Probe counters and start time, for the `stats` command.
    probes: ProbeCounts,
    started: std::time::Instant,
}

/// Probes this node's PingActors sent, saw answered and gave up on.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct ProbeCounts {
    sent: u64,
    acked: u64,
    missed: u64,
}

impl MembershipActor {
    pub fn new(
        core: Membership,
        transport: Transport<Body>,
        probe: ProbeSettings,
        auto_join: bool,
    ) -> Self {
        MembershipActor {
            core,
            transport,
            probe,
            pingers: HashMap::new(),
            next_token: 1,
            pending_join: Vec::new(),
            subscribers: Vec::new(),
            auto_join,
            probes: ProbeCounts::default(),
            started: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        clock::now()
    }

    /// Executes everything the core asked for, in order.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let mut changed = false;
        for effect in self.core.take_effects() {
            match effect {
                Effect::Send { to, msg } => {
                    if let Err(e) = self
                        .transport
                        .send(&to, Lane::Control, Body::Membership(msg))
                    {
                        warn!(peer = %to, "membership send dropped: {e}");
                    }
                }
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                Effect::Acked { peer, seq } => {
                    self.probes.acked += 1;
                    if let Some(p) = self.pingers.get(&peer) {
                        p.do_send(crate::membership::ping_actor::Acked { seq });
                    }
                }
                Effect::Event(ev) => {
                    changed |= !matches!(ev, MemberEvent::JoinFailed { .. });
                    self.on_event(ev, ctx);
                }
            }
        }
        if changed {
            let view = View {
                me: self.core.me().clone(),
                members: self.core.members(),
            };
            self.subscribers
                .retain(|s| s.try_send(view.clone()).is_ok() || s.connected());
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_timer(now, timer);
        self.drain(ctx);
    }

    /// Logs every membership event with a timestamp (detection and spreading times are
    /// computed from these lines) and reconciles the probers.
    fn on_event(&mut self, ev: MemberEvent, ctx: &mut Context<Self>) {
        let wall = clock::wall_ms();
        match ev {
            MemberEvent::SelfJoined {
                incarnation,
                members,
            } => {
                info!(wall, incarnation, members, "event=self_joined");
                self.auto_join = false;
                for r in self.pending_join.drain(..) {
                    let _ = r.send(Ok(Reply::new(
                        format!("joined with incarnation {incarnation}; {members} members"),
                        serde_json::json!({"joined": true, "incarnation": incarnation, "members": members}),
                    )));
                }
            }
            MemberEvent::JoinFailed { reason } => {
                warn!(wall, %reason, "event=join_failed");
                for r in self.pending_join.drain(..) {
                    let _ = r.send(Err(format!("join failed: {reason}")));
                }
                // A node started before (or while) the introducer is down keeps trying
                // until its first join succeeds; later joins are the operator's to retry.
                if self.auto_join {
                    ctx.run_later(JOIN_RETRY, |act, ctx| {
                        if act.auto_join && act.core.status() == Status::Idle {
                            if let Err(e) = act.core.join(clock::now(), clock::wall_ms()) {
                                warn!("join: {e}");
                            }
                            act.drain(ctx);
                        }
                    });
                }
            }
            MemberEvent::Joined { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=joined")
            }
            MemberEvent::Suspected {
                addr,
                incarnation,
                by_me,
            } => {
                warn!(wall, peer = %addr, incarnation, by_me, "event=suspected")
            }
            MemberEvent::Refuted { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=refuted")
            }
            MemberEvent::Failed { addr, incarnation } => {
                warn!(wall, peer = %addr, incarnation, "event=failed");
                self.transport.forget(&addr);
            }
            MemberEvent::Left { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=left");
                self.transport.forget(&addr);
            }
            MemberEvent::SelfLeft { incarnation } => info!(wall, incarnation, "event=self_left"),
            MemberEvent::Rejoin {
                old_incarnation,
                new_incarnation,
            } => {
                warn!(
                    wall,
                    old_incarnation,
                    new_incarnation,
                    "event=rejoin (this node was declared failed)"
                )
            }
            MemberEvent::MonitorsChanged(monitors) => {
                info!(wall, monitors = ?monitors.iter().map(|m| m.as_str()).collect::<Vec<_>>(), "event=monitors");
                self.reconcile_pingers(monitors, ctx);
            }
        }
    }

    fn reconcile_pingers(&mut self, monitors: Vec<NodeAddr>, ctx: &mut Context<Self>) {
        self.pingers.retain(|peer, addr| {
            let keep = monitors.contains(peer);
            if !keep {
                addr.do_send(crate::membership::ping_actor::Stop);
            }
            keep
        });
        for peer in monitors {
            if self.pingers.contains_key(&peer) {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            match PingActor::new(peer.clone(), self.probe, token, ctx.address()) {
                Ok(actor) => {
                    let addr = Supervisor::start(move |_| actor);
                    self.pingers.insert(peer, addr);
                }
                Err(e) => warn!(peer = %peer, "cannot start prober: {e}"),
            }
        }
    }

    fn members_reply(&self) -> Reply {
        let members = self.core.members();
        let mut text = format!("{} members:", members.len());
        for m in &members {
            text.push_str(&format!(
                "\n  {}  incarnation {}  {:?}",
                m.addr, m.incarnation, m.state
            ));
        }
        let json: Vec<_> = members.iter().map(member_json).collect();
        Reply::new(text, serde_json::Value::Array(json))
    }
}

impl MembershipActor {
    /// Traffic between nodes (frame bytes, tools' connections excluded), uptime and
    /// probe counts: what the background-traffic benchmark reads.
    fn stats_reply(&self) -> Reply {
        let t = self.transport.stats();
        let uptime_ms = self.started.elapsed().as_millis() as u64;
        let sent = t.control.bytes_sent + t.bulk.bytes_sent;
        let received = t.control.bytes_received + t.bulk.bytes_received;
        Reply::new(
            format!(
                "uptime {:.1} s; sent {sent} B (control {}, bulk {}); received {received} B \
                 (control {}, bulk {}); probes sent {}, acked {}, missed {}",
                uptime_ms as f64 / 1000.0,
                t.control.bytes_sent,
                t.bulk.bytes_sent,
                t.control.bytes_received,
                t.bulk.bytes_received,
                self.probes.sent,
                self.probes.acked,
                self.probes.missed,
            ),
            serde_json::json!({
                "uptime_ms": uptime_ms,
                "bytes_sent": sent,
                "bytes_received": received,
                "lanes": {"control": t.control, "bulk": t.bulk},
                "probes": self.probes,
            }),
        )
    }
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{}#{}", m.addr, m.joined),
        "addr": m.addr.as_str(),
        "incarnation": m.incarnation,
        "joined": m.joined,
        "state": m.state,
    })
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.auto_join && self.core.status() == Status::Idle {
            let now = self.now();
            if let Err(e) = self.core.join(now, clock::wall_ms()) {
                warn!("join: {e}");
            }
            self.drain(ctx);
        }
    }
}

impl Supervised for MembershipActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        warn!("membership actor restarting; probers are restarted from the core's monitors");
        self.pingers.clear();
    }
}

impl Handler<FromPeer> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_msg(now, &m.from, m.msg);
        self.drain(ctx);
    }
}

impl Handler<SendPing> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: SendPing, ctx: &mut Context<Self>) {
        self.probes.sent += 1;
        let now = self.now();
        self.core.send_ping(now, &m.peer, m.seq);
        self.drain(ctx);
    }
}

impl Handler<Unresponsive> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Unresponsive, ctx: &mut Context<Self>) {
        self.probes.missed += 1;
        let now = self.now();
        self.core.report_unresponsive(now, &m.peer);
        self.drain(ctx);
    }
}

impl Handler<Subscribe> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _ctx: &mut Context<Self>) {
        let _ = m.0.try_send(View {
            me: self.core.me().clone(),
            members: self.core.members(),
        });
        self.subscribers.push(m.0);
    }
}

impl Handler<Exec> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Exec, ctx: &mut Context<Self>) {
        let now = self.now();
        let outcome = match m.cmd {
            Command::ListMem => Ok(self.members_reply()),
            Command::Stats => Ok(self.stats_reply()),
            Command::ListSelf => {
                let me = self.core.self_member();
                let status = self.core.status();
                Ok(Reply::new(
                    format!(
                        "{}  incarnation {}  joined {}  {:?}",
                        me.addr, me.incarnation, me.joined, status
                    ),
                    {
                        let mut j = member_json(&me);
                        j["status"] = serde_json::json!(format!("{status:?}").to_lowercase());
                        j
                    },
                ))
            }
            Command::Join => match self.core.join(now, clock::wall_ms()) {
                Ok(()) => {
                    self.pending_join.push(m.reply);
                    self.drain(ctx);
                    return;
                }
                Err(e) => Err(format!("join: {e}")),
            },
            Command::Leave => match self.core.leave(now) {
                Ok(()) => {
                    self.drain(ctx);
                    Ok(Reply::new(
                        "left the cluster",
                        serde_json::json!({"left": true}),
                    ))
                }
                Err(e) => Err(format!("leave: {e}")),
            },
            other => Err(format!("{other:?} is not a membership command")),
        };
        self.drain(ctx);
        let _ = m.reply.send(outcome);
    }
}
