//! MembershipActor: the thin shell around the [`Membership`] core. It feeds the core
//! messages, timer fires, prober reports and console commands as inputs, executes its
//! effects (sends on the control lane, timers, logs) and keeps one supervised PingActor
//! per monitored peer. Console wording lives in [`crate::control::membership_text`].

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::control::membership_text::{self, ProbeCounts};
use crate::control::{Command, Outcome};
use crate::machine::Machine;
use crate::membership::ping::ProbeSettings;
use crate::membership::ping_actor::{Acked, PingActor, SendPing, Stop, ToMembership, Unresponsive};
use crate::membership::{
    Effect, Event, Input, Member, MemberState, Membership, MembershipError, Msg, Status, Timer,
};
use crate::net::body::Body;
use crate::net::transport::Transport;
use crate::net::wire::Lane;
use crate::types::{Millis, NodeAddr};

/// Pause between the start-up join's attempts while the introducer does not answer.
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A membership message from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: Msg,
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
    /// In the cluster (joined, not left). Before its join completes a node's list holds
    /// only itself, which must not pass for a one-node cluster: SDFS would then answer
    /// "no such file" for everything, or acknowledge a put with one copy.
    pub joined: bool,
}

impl View {
    /// Addresses of the live members (alive or suspect), this node included, sorted.
    pub fn live(&self) -> Vec<NodeAddr> {
        let mut live: Vec<NodeAddr> = self
            .members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.addr.clone())
            .collect();
        live.push(self.me.clone());
        live.sort();
        live.dedup();
        live
    }
}

/// Pushes `view` to every subscriber still running. A view is state, not a sample, so
/// it is never dropped: with `try_send`, a subscriber whose mailbox was full (SDFS in a
/// burst of re-replication traffic) missed the change that killed a node and went on
/// waiting for that node's answers until the next change, which might never come.
/// `do_send` queues past the mailbox's capacity; views are rare and small.
fn publish(subscribers: &mut Vec<Recipient<View>>, view: &View) {
    subscribers.retain(|s| s.connected());
    for s in subscribers.iter() {
        s.do_send(view.clone());
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

    /// Feeds the core one input and executes what it asks for.
    fn step(&mut self, input: Input, ctx: &mut Context<Self>) {
        let fx = self.core.handle(self.now(), input);
        self.execute(fx, ctx);
    }

    /// Joins with this process's wall clock as the incarnation; `None` when started.
    fn join(&mut self, ctx: &mut Context<Self>) -> Option<MembershipError> {
        let fx = self.core.handle(
            self.now(),
            Input::Join {
                incarnation: clock::wall_ms(),
            },
        );
        let refused = refusal(&fx);
        self.execute(fx, ctx);
        refused
    }

    /// Executes everything the core asked for, in order.
    fn execute(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        let mut changed = false;
        for effect in effects {
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
                        p.do_send(Acked { seq });
                    }
                }
                // The caller of a join or leave reports it.
                Effect::Refused(_) => {}
                Effect::Event(ev) => {
                    changed |= !matches!(ev, Event::JoinFailed { .. });
                    self.on_event(ev, ctx);
                }
            }
        }
        if changed {
            let view = View {
                me: self.core.me().clone(),
                members: self.core.members(),
                joined: self.core.status() == Status::Member,
            };
            publish(&mut self.subscribers, &view);
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Context<Self>) {
        self.step(Input::Timer(timer), ctx);
    }

    /// Logs every membership event with a timestamp (detection and spreading times are
    /// computed from these lines) and reconciles the probers.
    fn on_event(&mut self, ev: Event, ctx: &mut Context<Self>) {
        crate::metrics::membership_event(&ev);
        let wall = clock::wall_ms();
        match ev {
            Event::SelfJoined {
                incarnation,
                members,
            } => {
                info!(wall, incarnation, members, "event=self_joined");
                self.auto_join = false;
                for r in self.pending_join.drain(..) {
                    let _ = r.send(Ok(membership_text::joined(incarnation, members)));
                }
            }
            Event::JoinFailed { reason } => {
                warn!(wall, %reason, "event=join_failed");
                for r in self.pending_join.drain(..) {
                    let _ = r.send(Err(membership_text::join_failed(&reason)));
                }
                // A node started before (or while) the introducer is down keeps trying
                // until its first join succeeds; later joins are the operator's to retry.
                if self.auto_join {
                    ctx.run_later(JOIN_RETRY, |act, ctx| {
                        if act.auto_join && act.core.status() == Status::Idle {
                            if let Some(e) = act.join(ctx) {
                                warn!("join: {e}");
                            }
                        }
                    });
                }
            }
            Event::Joined { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=joined")
            }
            Event::Suspected {
                addr,
                incarnation,
                by_me,
            } => {
                warn!(wall, peer = %addr, incarnation, by_me, "event=suspected")
            }
            Event::Refuted { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=refuted")
            }
            Event::Failed { addr, incarnation } => {
                warn!(wall, peer = %addr, incarnation, "event=failed");
                self.transport.forget(&addr);
            }
            Event::Left { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=left");
                self.transport.forget(&addr);
            }
            Event::SelfLeft { incarnation } => info!(wall, incarnation, "event=self_left"),
            Event::Rejoin {
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
            Event::Implausible {
                from,
                addr,
                incarnation,
                suppressed,
            } => {
                let from = from.as_ref().map_or("(local)", |f| f.as_str());
                warn!(wall, from, peer = %addr, incarnation, suppressed,
                    "event=implausible (update dropped: incarnation beyond wall clock + a day)")
            }
            Event::RejoinDeferred { at } => {
                let wait_ms = at.saturating_sub(self.now());
                warn!(
                    wall,
                    wait_ms, "event=rejoin_deferred (declared failed again soon after a rejoin)"
                )
            }
            Event::Forgiven { addr, incarnation } => {
                info!(wall, peer = %addr, incarnation, "event=forgiven")
            }
            Event::MonitorsChanged(monitors) => {
                info!(wall, monitors = ?monitors.iter().map(|m| m.as_str()).collect::<Vec<_>>(), "event=monitors");
                self.reconcile_pingers(monitors, ctx);
            }
        }
    }

    fn reconcile_pingers(&mut self, monitors: Vec<NodeAddr>, ctx: &mut Context<Self>) {
        self.pingers.retain(|peer, addr| {
            let keep = monitors.contains(peer);
            if !keep {
                addr.do_send(Stop);
            }
            keep
        });
        for peer in monitors {
            if self.pingers.contains_key(&peer) {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let me = ctx.address();
            let to_membership = ToMembership {
                send_ping: me.clone().recipient(),
                unresponsive: me.recipient(),
            };
            match PingActor::new(peer.clone(), self.probe, token, to_membership) {
                Ok(actor) => {
                    let addr = Supervisor::start(move |_| actor);
                    self.pingers.insert(peer, addr);
                }
                Err(e) => warn!(peer = %peer, "cannot start prober: {e}"),
            }
        }
    }
}

/// The refusal among a join's or leave's effects, if it was refused.
fn refusal(effects: &[Effect]) -> Option<MembershipError> {
    effects.iter().find_map(|e| match e {
        Effect::Refused(r) => Some(r.clone()),
        _ => None,
    })
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.auto_join && self.core.status() == Status::Idle {
            if let Some(e) = self.join(ctx) {
                warn!("join: {e}");
            }
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
        self.step(
            Input::Msg {
                from: m.from,
                msg: m.msg,
            },
            ctx,
        );
    }
}

impl Handler<SendPing> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: SendPing, ctx: &mut Context<Self>) {
        self.probes.sent += 1;
        self.step(
            Input::SendPing {
                peer: m.peer,
                seq: m.seq,
            },
            ctx,
        );
    }
}

impl Handler<Unresponsive> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Unresponsive, ctx: &mut Context<Self>) {
        self.probes.missed += 1;
        self.step(Input::Unresponsive { peer: m.peer }, ctx);
    }
}

impl Handler<Subscribe> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _ctx: &mut Context<Self>) {
        m.0.do_send(View {
            me: self.core.me().clone(),
            members: self.core.members(),
            joined: self.core.status() == Status::Member,
        });
        self.subscribers.push(m.0);
    }
}

impl Handler<Exec> for MembershipActor {
    type Result = ();
    fn handle(&mut self, m: Exec, ctx: &mut Context<Self>) {
        let outcome = match m.cmd {
            Command::ListMem => Ok(membership_text::members(&self.core.members())),
            Command::Stats => Ok(membership_text::stats(
                &self.transport.stats(),
                self.started.elapsed().as_millis() as u64,
                self.probes,
            )),
            Command::ListSelf => Ok(membership_text::self_member(
                &self.core.self_member(),
                self.core.status(),
            )),
            Command::Join => match self.join(ctx) {
                // The answer comes with SelfJoined or JoinFailed.
                None => {
                    self.pending_join.push(m.reply);
                    return;
                }
                Some(e) => Err(membership_text::refused("join", &e)),
            },
            Command::Forgive { addr } => {
                let addr = NodeAddr(addr);
                let fx = self.core.handle(self.now(), Input::Forgive { addr });
                let refused = refusal(&fx);
                self.execute(fx, ctx);
                match refused {
                    None => Ok(membership_text::forgiven()),
                    Some(e) => Err(membership_text::refused("forgive", &e)),
                }
            }
            Command::Leave => {
                let fx = self.core.handle(self.now(), Input::Leave);
                let refused = refusal(&fx);
                self.execute(fx, ctx);
                match refused {
                    None => Ok(membership_text::left()),
                    Some(e) => Err(membership_text::refused("leave", &e)),
                }
            }
            other => Err(membership_text::not_membership(&other)),
        };
        let _ = m.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Blocks in its first message until `gate` opens, so its mailbox fills up behind it.
    struct Busy {
        gate: Option<mpsc::Receiver<()>>,
        seen: mpsc::Sender<usize>,
    }

    impl Actor for Busy {
        type Context = Context<Self>;
    }

    impl Handler<View> for Busy {
        type Result = ();
        fn handle(&mut self, v: View, _ctx: &mut Context<Self>) {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let _ = self.seen.send(v.members.len());
        }
    }

    fn view(n: usize) -> View {
        View {
            me: NodeAddr("127.0.0.1:1".into()),
            members: (0..n)
                .map(|i| Member {
                    addr: NodeAddr(format!("127.0.0.1:{}", 2 + i)),
                    incarnation: 1,
                    joined: 1,
                    state: MemberState::Alive,
                })
                .collect(),
            joined: true,
        }
    }

    #[test]
    fn a_subscriber_with_a_full_mailbox_still_gets_every_view() {
        let sys = System::new();
        let (open, gate) = mpsc::channel();
        let (seen_tx, seen) = mpsc::channel();
        sys.block_on(async move {
            let arbiter = Arbiter::new();
            let busy = Busy::start_in_arbiter(&arbiter.handle(), move |_| Busy {
                gate: Some(gate),
                seen: seen_tx,
            });
            let mut subs = vec![busy.recipient()];
            // Far more views than a default mailbox (16) holds while the subscriber is stuck.
            for n in 0..100 {
                publish(&mut subs, &view(n));
            }
            assert_eq!(subs.len(), 1, "a running subscriber is kept");
            open.send(()).unwrap();
            let got: Vec<usize> = (0..100)
                .map_while(|_| seen.recv_timeout(Duration::from_secs(10)).ok())
                .collect();
            arbiter.stop();
            assert_eq!(got, (0..100).collect::<Vec<_>>(), "views lost or reordered");
        });
    }
}
