//! Job client core: this node's console requests to the coordinator (C1-C5). It numbers
//! each request, holds it until a coordinator is known, sends it again to a new
//! coordinator after a takeover (same request id: a resubmitted job is recognised),
//! matches each answer to its request, and gives up after a timeout.
//!
//! The shell passes a `ticket` of its own with every request and gets it back with the
//! [`Answer`]; it also tells the core which node coordinates ([`Input::Coordinator`]),
//! which it learns from the node's coordinator core.

use std::collections::BTreeMap;

use super::error::JobError;
use super::msg::{Msg, StatusKind, StatusReport};
use super::types::JobId;
use crate::machine::Machine;
use crate::types::{Millis, NodeAddr};

/// What the console asks the coordinator.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// C1, C2 or C5.
    Status(StatusKind),
    /// C3: the batch size of `model` from the next batch on.
    SetBatchSize {
        /// The model.
        model: String,
        /// The new size.
        size: u32,
    },
    /// C4: run `model` over every input under the SDFS prefix `input`.
    Submit {
        /// The model.
        model: String,
        /// SDFS prefix of the inputs (already stored there).
        input: String,
    },
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The report asked for.
    Status(StatusReport),
    /// C3 is replicated and applies to the next batches.
    BatchSizeSet {
        /// The model.
        model: String,
        /// Its new batch size.
        size: u32,
    },
    /// C4: the job is accepted.
    Accepted {
        /// Its id.
        job: JobId,
        /// Its number of queries.
        queries: u64,
        /// The model.
        model: String,
        /// The SDFS prefix of its inputs.
        input: String,
    },
    /// The coordinator refused; nothing changed.
    Refused(JobError),
    /// An answer of the wrong kind for the request.
    Unexpected(Box<Msg>),
    /// No answer before the timeout.
    NoAnswer {
        /// The coordinator this node knew of at the end.
        coordinator: Option<NodeAddr>,
    },
}

/// The client's only timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The request has waited long enough for its answer.
    Expire {
        /// The request.
        request_id: u64,
    },
}

/// Everything that can happen to the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The console asks; `ticket` comes back with the answer.
    Request {
        /// The shell's token for the request.
        ticket: u64,
        /// What is asked.
        request: Request,
    },
    /// The node that coordinates now, as this node knows it (`None`: none yet).
    Coordinator(Option<NodeAddr>),
    /// A job message for the client (see `net::route`: answers to its requests and
    /// completions of its jobs).
    Message {
        /// Sender.
        from: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// A timer this core set fired.
    Timer(Timer),
}

/// What the client's shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a message.
    Send {
        /// Recipient.
        to: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// Hand `timer` back at `at`.
    SetTimer {
        /// When (caller's clock).
        at: Millis,
        /// Which.
        timer: Timer,
    },
    /// The request of `ticket` is over.
    Answer {
        /// The shell's token for it.
        ticket: u64,
        /// How it ended.
        answer: Answer,
    },
    /// Something for the log.
    Event(Event),
}

/// What the client reports for the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A job this node submitted is complete.
    JobCompleted {
        /// The job.
        job: JobId,
        /// Queries with a result.
        ok: u64,
        /// Queries that failed for good.
        failed: u64,
    },
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    request: Request,
    /// Built once: every (re)send carries the same request id.
    msg: Msg,
    /// The coordinator it was last sent to.
    sent_to: Option<NodeAddr>,
}

/// The job client of one node.
#[derive(Debug)]
pub struct Client {
    next_request: u64,
    timeout_ms: Millis,
    coordinator: Option<NodeAddr>,
    pending: BTreeMap<u64, Pending>,
}

impl Client {
    /// A client whose first request gets `first_request_id` (it must not repeat across
    /// restarts of the node: a resubmission is recognised by client and request id), and
    /// whose requests give up after `timeout_ms`.
    pub fn new(first_request_id: u64, timeout_ms: Millis) -> Self {
        Client {
            next_request: first_request_id,
            timeout_ms,
            coordinator: None,
            pending: BTreeMap::new(),
        }
    }

    /// The coordinator this client sends to (`None`: requests wait).
    pub fn coordinator(&self) -> Option<&NodeAddr> {
        self.coordinator.as_ref()
    }

    /// Requests waiting for their answer.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    fn on_request(&mut self, now: Millis, ticket: u64, request: Request) -> Vec<Effect> {
        let request_id = self.next_request;
        self.next_request += 1;
        let msg = match &request {
            Request::Status(kind) => Msg::StatusRequest {
                request_id,
                kind: *kind,
            },
            Request::SetBatchSize { model, size } => Msg::SetBatchSize {
                request_id,
                model: model.clone(),
                size: *size,
            },
            Request::Submit { model, input } => Msg::SubmitJob {
                request_id,
                model: model.clone(),
                input: input.clone(),
            },
        };
        let mut fx = vec![Effect::SetTimer {
            at: now.saturating_add(self.timeout_ms),
            timer: Timer::Expire { request_id },
        }];
        let mut p = Pending {
            ticket,
            request,
            msg,
            sent_to: None,
        };
        // Until a coordinator is known (cluster just formed) the request waits.
        if let Some(c) = &self.coordinator {
            fx.push(Effect::Send {
                to: c.clone(),
                msg: p.msg.clone(),
            });
            p.sent_to = Some(c.clone());
        }
        self.pending.insert(request_id, p);
        fx
    }

    /// Sends every request not yet sent to the coordinator now known: the ones that
    /// waited for one, and the ones sent to a coordinator that was replaced.
    fn on_coordinator(&mut self, coordinator: Option<NodeAddr>) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.coordinator = coordinator;
        let Some(c) = &self.coordinator else {
            return fx;
        };
        for p in self.pending.values_mut() {
            if p.sent_to.as_ref() != Some(c) {
                fx.push(Effect::Send {
                    to: c.clone(),
                    msg: p.msg.clone(),
                });
                p.sent_to = Some(c.clone());
            }
        }
        fx
    }

    fn on_message(&mut self, msg: Msg) -> Vec<Effect> {
        let request_id = match &msg {
            Msg::JobAccepted { request_id, .. }
            | Msg::Refused { request_id, .. }
            | Msg::BatchSizeSet { request_id, .. }
            | Msg::StatusReply { request_id, .. } => *request_id,
            Msg::JobCompleted { job, ok, failed } => {
                return vec![Effect::Event(Event::JobCompleted {
                    job: *job,
                    ok: *ok,
                    failed: *failed,
                })];
            }
            _ => return Vec::new(),
        };
        // The first answer wins; a second (from the replaced coordinator) finds nothing.
        let Some(p) = self.pending.remove(&request_id) else {
            return Vec::new();
        };
        let answer = match (p.request, msg) {
            (_, Msg::Refused { error, .. }) => Answer::Refused(error),
            (Request::Status(_), Msg::StatusReply { report, .. }) => Answer::Status(report),
            (Request::SetBatchSize { .. }, Msg::BatchSizeSet { model, size, .. }) => {
                Answer::BatchSizeSet { model, size }
            }
            (Request::Submit { model, input }, Msg::JobAccepted { job, queries, .. }) => {
                Answer::Accepted {
                    job,
                    queries,
                    model,
                    input,
                }
            }
            (_, other) => Answer::Unexpected(Box::new(other)),
        };
        vec![Effect::Answer {
            ticket: p.ticket,
            answer,
        }]
    }

    fn on_timer(&mut self, timer: Timer) -> Vec<Effect> {
        let Timer::Expire { request_id } = timer;
        match self.pending.remove(&request_id) {
            Some(p) => vec![Effect::Answer {
                ticket: p.ticket,
                answer: Answer::NoAnswer {
                    coordinator: self.coordinator.clone(),
                },
            }],
            None => Vec::new(),
        }
    }
}

impl Machine for Client {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        match input {
            Input::Request { ticket, request } => self.on_request(now, ticket, request),
            Input::Coordinator(c) => self.on_coordinator(c),
            Input::Message { msg, .. } => self.on_message(msg),
            Input::Timer(timer) => self.on_timer(timer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(fx: &[Effect]) -> Vec<(&NodeAddr, &Msg)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_request_waits_for_a_coordinator_and_times_out_once() {
        let mut c = Client::new(100, 20_000);
        let fx = c.handle(
            5,
            Input::Request {
                ticket: 1,
                request: Request::Status(StatusKind::Rates),
            },
        );
        assert!(sends(&fx).is_empty());
        let fx = c.handle(6, Input::Coordinator(Some("c:1".into())));
        assert_eq!(
            sends(&fx),
            vec![(
                &NodeAddr::from("c:1"),
                &Msg::StatusRequest {
                    request_id: 100,
                    kind: StatusKind::Rates
                }
            )]
        );
        // The same coordinator again: nothing is sent twice.
        assert!(c
            .handle(7, Input::Coordinator(Some("c:1".into())))
            .is_empty());
        let fx = c.handle(20_005, Input::Timer(Timer::Expire { request_id: 100 }));
        assert!(matches!(
            fx.as_slice(),
            [Effect::Answer {
                ticket: 1,
                answer: Answer::NoAnswer {
                    coordinator: Some(_)
                }
            }]
        ));
        assert_eq!(c.outstanding(), 0);
    }
}
