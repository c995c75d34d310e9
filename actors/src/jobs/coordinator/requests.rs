//! Client requests to the coordinator: job submission (C4), batch size (C3) and the
//! status reports (C1, C2, C5), and the bookkeeping of job manifests in SDFS. Every
//! acknowledgement waits until the standby has the change.

use super::{Coordinator, Effect, PendingAck};
use crate::jobs::error::JobError;
use crate::jobs::msg::{Msg, StatusKind};
use crate::jobs::record::Record;
use crate::jobs::types::{JobId, JobManifest, Queries, Source, MAX_QUERIES};
use crate::types::{Millis, NodeAddr};
use crate::weights::WeightsPin;

/// What the shell found for a submission (an [`super::Input::InputsListed`]).
pub(super) struct Listed {
    pub client: NodeAddr,
    pub request_id: u64,
    pub model: String,
    pub input: String,
    pub sources: Vec<Source>,
}

impl Coordinator {
    /// C4 arrived: refuse it at once if it cannot be accepted, acknowledge a
    /// resubmission again, else have the shell list its inputs.
    pub(super) fn on_submit_job(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        request_id: u64,
        model: String,
        input: String,
        fx: &mut Vec<Effect>,
    ) {
        if !self.is_primary() {
            self.refuse(from, request_id, self.not_coordinator(), fx);
        } else if let Some(job) = self.state.job_for_request(from, request_id) {
            self.reack_job(now, job, fx);
        } else if self.cfg.model(&model).is_none() {
            let error = JobError::UnknownModel {
                model,
                known: self.cfg.model_names(),
            };
            self.refuse(from, request_id, error, fx);
        } else {
            fx.push(Effect::ListInputs {
                client: from.clone(),
                request_id,
                model,
                input,
            });
        }
    }

    /// The shell listed the inputs of a `ListInputs`: accept the job, pinned to
    /// `weights`, or refuse it if this node stopped coordinating meanwhile, nothing is
    /// there, or the model's active weights could not be read. (The model was checked
    /// when the request came in.)
    pub(super) fn on_inputs_listed(
        &mut self,
        now: Millis,
        listed: Listed,
        weights: Result<WeightsPin, String>,
    ) -> Vec<Effect> {
        let Listed {
            client,
            request_id,
            model,
            input,
            sources,
        } = listed;
        let (model, input) = (model.as_str(), input.as_str());
        let mut fx = Vec::new();
        if !self.is_primary() {
            self.refuse(&client, request_id, self.not_coordinator(), &mut fx);
            return fx;
        }
        if let Some(job) = self.state.job_for_request(&client, request_id) {
            self.reack_job(now, job, &mut fx);
            return fx;
        }
        let queries = match Queries::new(sources) {
            Ok(q) => q,
            Err(n) => {
                let error = JobError::TooManyQueries {
                    input: input.to_string(),
                    queries: n,
                    max: MAX_QUERIES,
                };
                self.refuse(&client, request_id, error, &mut fx);
                return fx;
            }
        };
        if queries.is_empty() {
            let error = JobError::NoInputs {
                input: input.to_string(),
            };
            self.refuse(&client, request_id, error, &mut fx);
            return fx;
        }
        let weights = match weights {
            Ok(w) => w,
            Err(error) => {
                let model = model.to_string();
                self.refuse(
                    &client,
                    request_id,
                    JobError::WeightsUnreadable { model, error },
                    &mut fx,
                );
                return fx;
            }
        };
        let epoch = self.reign.as_ref().map_or(0, |r| r.term.epoch);
        let manifest = JobManifest {
            id: self.state.next_job_id(epoch),
            model: model.to_string(),
            input: input.to_string(),
            queries,
            client: client.clone(),
            request_id,
            submitted_at: now,
            weights,
        };
        fx.push(Effect::WriteManifest {
            manifest: manifest.clone(),
        });
        self.with_primary(now, &mut fx, |p, cx| {
            let id = manifest.id;
            let n = u64::from(manifest.queries.len());
            p.queues.insert(id, (0..manifest.queries.len()).collect());
            let seq = p.log(cx, Record::JobAccepted { manifest });
            p.pending.push(PendingAck {
                seq,
                needs_manifest: Some(id),
                to: client,
                msg: Msg::JobAccepted {
                    request_id,
                    job: id,
                    queries: n,
                },
            });
            p.sync_fairness(cx);
            p.fill(cx);
            p.release(cx);
        });
        fx
    }

    pub(super) fn reack_job(&mut self, now: Millis, job: JobId, fx: &mut Vec<Effect>) {
        let Some(j) = self.state.jobs.get(&job) else {
            return;
        };
        let (client, request_id, n) = (
            j.manifest.client.clone(),
            j.manifest.request_id,
            j.manifest.queries.len(),
        );
        self.with_primary(now, fx, |p, cx| {
            p.pending.push(PendingAck {
                seq: p.seq,
                needs_manifest: Some(job),
                to: client,
                msg: Msg::JobAccepted {
                    request_id,
                    job,
                    queries: u64::from(n),
                },
            });
            p.release(cx);
        });
    }

    /// The manifest of a `WriteManifest` is in SDFS.
    pub(super) fn on_manifest_written(&mut self, now: Millis, job: JobId) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.with_primary(now, &mut fx, |p, cx| {
            if cx.state.jobs.get(&job).is_some_and(|j| !j.manifest_stored) {
                p.log(cx, Record::ManifestStored { job });
            }
            p.release(cx);
        });
        fx
    }

    pub(super) fn on_set_batch_size(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        request_id: u64,
        model: String,
        size: u32,
        fx: &mut Vec<Effect>,
    ) {
        if !self.is_primary() {
            self.refuse(from, request_id, self.not_coordinator(), fx);
            return;
        }
        if self.cfg.model(&model).is_none() {
            let error = JobError::UnknownModel {
                model,
                known: self.cfg.model_names(),
            };
            self.refuse(from, request_id, error, fx);
            return;
        }
        let max = self.cfg.max_batch_size;
        if size == 0 || size > max {
            self.refuse(
                from,
                request_id,
                JobError::BadBatchSize { model, size, max },
                fx,
            );
            return;
        }
        self.with_primary(now, fx, |p, cx| {
            let seq = p.log(
                cx,
                Record::BatchSizeSet {
                    model: model.clone(),
                    size,
                },
            );
            p.pending.push(PendingAck {
                seq,
                needs_manifest: None,
                to: from.clone(),
                msg: Msg::BatchSizeSet {
                    request_id,
                    model,
                    size,
                },
            });
            p.release(cx);
        });
    }

    /// C1, C2 or C5: only the coordinator answers.
    pub(super) fn on_status_request(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        request_id: u64,
        kind: StatusKind,
        fx: &mut Vec<Effect>,
    ) {
        if self.is_primary() {
            match self.status(now, kind) {
                Ok(report) => fx.push(Effect::Send {
                    to: from.clone(),
                    msg: Msg::StatusReply { request_id, report },
                }),
                Err(error) => self.refuse(from, request_id, error, fx),
            }
        } else {
            self.refuse(from, request_id, self.not_coordinator(), fx);
        }
    }
}
