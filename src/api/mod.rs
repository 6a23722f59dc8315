//! The use cases every front door shares: create a session, send it events (a message, an
//! interrupt, a confirmation, a custom tool's answer), and read it. The CLI calls these, the
//! wake consumer applies the same [`admit`] rule to the events a wake carries, and the gateway
//! will call them too, so a rule is enforced once whichever door is used.
//!
//! Errors are classified ([`ErrorClass`]) so each door can map them: the CLI to a message and
//! an exit code, the gateway to an HTTP status.

mod admit;
mod fork;
mod schedule;
mod workspace;

pub use fork::Forked;

pub use admit::{ACCEPTED_TYPES, Principal, Refusal, VaultGrant, admit, admit_from};

use async_nats::jetstream;

use crate::bus::BusError;
use crate::bus::schedules::ScheduleError;
use crate::event::{
    Budget, ConfigError, ContentBlock, Event, EventId, PriceTable, Record, SessionCreated,
    SessionId, SessionLimits, UserCustomToolResult, UserInterrupt, UserMessage,
    UserToolConfirmation,
};
use crate::session::{LogError, SessionLog, SessionState, Slice};

/// What kind of failure an [`ApiError`] is, for a front door to map (an HTTP status, an exit
/// code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The session (or what the request names) does not exist: 404.
    NotFound,
    /// The request is fine but the session's state does not allow it now: 409.
    Conflict,
    /// The caller may not do this (a vault it does not own, an instruction): 403.
    Forbidden,
    /// The request itself is malformed: 400.
    Invalid,
    /// NATS is out of reach or without a leader; the same request may succeed later: 503.
    Unavailable,
}

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The event was not admitted.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The session's configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log refused or failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A scheduled wake was refused or could not be reached.
    #[error(transparent)]
    Schedule(#[from] crate::bus::schedules::ScheduleError),
    /// The event is stored, but the session could not be woken.
    #[error("the event is stored, but waking the session failed: {0}")]
    Wake(String),
}

impl ApiError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Refused(r) if r.is_not_found() => ErrorClass::NotFound,
            Self::Refused(r) if r.is_invalid() => ErrorClass::Invalid,
            Self::Refused(r) if r.is_forbidden() => ErrorClass::Forbidden,
            Self::Refused(_) => ErrorClass::Conflict,
            Self::Config(_) => ErrorClass::Invalid,
            Self::Log(LogError::NotFound(_)) => ErrorClass::NotFound,
            Self::Log(
                LogError::AlreadyExists(_) | LogError::Conflict { .. } | LogError::IdTaken { .. },
            ) => ErrorClass::Conflict,
            Self::Log(LogError::Invalid(_) | LogError::TooLarge { .. }) => ErrorClass::Invalid,
            Self::Schedule(ScheduleError::Invalid(_)) => ErrorClass::Invalid,
            Self::Schedule(ScheduleError::Full(_)) => ErrorClass::Conflict,
            Self::Schedule(ScheduleError::NotFound { .. }) => ErrorClass::NotFound,
            Self::Log(_) | Self::Wake(_) | Self::Schedule(_) => ErrorClass::Unavailable,
        }
    }
}

/// Where an event sent to a session landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Its stream sequence.
    pub seq: u64,
    /// True when the same event (same id, same session) was already there: nothing new was
    /// stored.
    pub duplicate: bool,
}

/// Folded states of the sessions a front door used lately, brought up to date from the log
/// (only the events after the cached state's last sequence are read) on every use. The log
/// stays the truth: a state is never used without first reading what it has not seen. A
/// long-lived door (the gateway) so admits an event in one short read, not a whole replay.
#[derive(Default)]
struct States(std::sync::Mutex<std::collections::HashMap<SessionId, SessionState>>);

/// Sessions whose folded state an [`Api`] keeps.
const CACHED_STATES: usize = 1024;

impl From<crate::session::Appended> for Sent {
    fn from(a: crate::session::Appended) -> Self {
        Self {
            seq: a.last_seq,
            duplicate: a.duplicate,
        }
    }
}

/// The front door's library: a log and a JetStream context to wake sessions with, acting for
/// one principal, with the deployment's price table for budgets.
#[derive(Clone)]
pub struct Api {
    log: SessionLog,
    js: jetstream::Context,
    principal: Principal,
    prices: std::sync::Arc<PriceTable>,
    states: std::sync::Arc<States>,
}

impl Api {
    /// Opens the session log on a connected client, acting for `principal`.
    pub async fn open(client: async_nats::Client, principal: Principal) -> Result<Self, ApiError> {
        let js = jetstream::new(client.clone());
        Ok(Self {
            log: SessionLog::open(client).await?,
            js,
            principal,
            prices: Default::default(),
            states: Default::default(),
        })
    }

    /// A session's state now: the cached fold brought up to date, or a whole replay.
    async fn current(&self, id: &SessionId) -> Result<SessionState, ApiError> {
        let cached = self.states.0.lock().ok().and_then(|m| m.get(id).cloned());
        let state = match cached {
            Some(mut state) => {
                for r in &self.log.read_from(id, state.last_seq + 1).await? {
                    state.apply_record(r);
                }
                state
            }
            None => self.log.load_state(id).await?,
        };
        self.principal.may_see(id, state.config.as_ref())?;
        if let Ok(mut m) = self.states.0.lock() {
            if m.len() >= CACHED_STATES && !m.contains_key(id) {
                m.clear();
            }
            m.insert(id.clone(), state.clone());
        }
        Ok(state)
    }

    /// Prices budgets with `prices` (herd's built-in table and the operator's `[prices]`)
    /// instead of the built-in table alone.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = std::sync::Arc::new(prices);
        self
    }

    /// The same library acting for another principal (the gateway's tenant of one request):
    /// a clone of the connection handles, nothing opened.
    pub fn acting_for(&self, principal: Principal) -> Self {
        Self {
            principal,
            ..self.clone()
        }
    }

    /// Ends a session for good with a `session.status_terminated` saying why (the gateway's
    /// archive and delete). Operator and gateway only. A session already terminated is left
    /// as it is (its schedules are cancelled again): the answer is its current last sequence,
    /// as a duplicate.
    pub async fn terminate(&self, id: &SessionId, reason: &str) -> Result<Sent, ApiError> {
        if !self.principal.may_instruct {
            return Err(Refusal::Instruct(self.principal.name.clone()).into());
        }
        let state = self.current(id).await?;
        if state.event_count == 0 {
            return Err(Refusal::NotFound(id.clone()).into());
        }
        let sent = if state.status == crate::session::Status::Terminated {
            Sent {
                seq: state.last_seq,
                duplicate: true,
            }
        } else {
            let event = Event::new(crate::event::SessionStatusTerminated {
                reason: reason.to_string(),
            });
            self.log.append_fact(id, &event).await?.into()
        };
        // A terminated session is never woken again: its schedules go with it. Also when it
        // was terminated already, so a retry after this failed (the stream out of reach)
        // finishes the job; cancelling none is a no-op.
        crate::bus::schedules::cancel_all(&self.js, id).await?;
        Ok(sent)
    }

    /// Refuses a principal that is not the deployment's operator (a tenant of the gateway
    /// never is): for use cases that write events of every kind or publish jobs.
    fn operator_only(&self) -> Result<(), ApiError> {
        if !self.principal.may_instruct || self.principal.tenant.is_some() {
            return Err(Refusal::Instruct(self.principal.name.clone()).into());
        }
        Ok(())
    }

    /// The session log, for reads the use cases do not wrap.
    pub fn log(&self) -> &SessionLog {
        &self.log
    }

    /// Creates a session from a validated configuration; its `session.created` is the first
    /// event of its log, and its configuration for good.
    pub async fn create(
        &self,
        id: &SessionId,
        mut created: SessionCreated,
    ) -> Result<Event, ApiError> {
        created.validate()?;
        self.principal.may_create(&created)?;
        if let Some(budget) = &mut created.limits.budget {
            self.prices.price_new_budget(&created.agent.model, budget)?;
        }
        self.principal.may_use_vaults(&created.vault_ids)?;
        let event = Event::new(created);
        self.log.create(id, &event).await?;
        Ok(event)
    }

    /// Sends an event from outside to a session: admitted against its current state,
    /// appended as a fact (deduplicated by its id), then the session is woken. A resend of an
    /// event already in the log is `duplicate`, not refused, whatever the session did since.
    pub async fn send(&self, id: &SessionId, event: &Event) -> Result<Sent, ApiError> {
        let state = self.current(id).await?;
        let sent = match admit_from(&self.principal, &state, event) {
            Ok(()) => self.log.append_fact(id, event).await?.into(),
            // A malformed event is refused whatever the log holds.
            // So is one the principal may not see, or that is not there: nothing about its
            // log is looked up for it.
            Err(refusal)
                if refusal.is_invalid() || refusal.is_forbidden() || refusal.is_not_found() =>
            {
                return Err(refusal.into());
            }
            Err(refusal) => match self.find(id, event).await? {
                Some(seq) => Sent {
                    seq,
                    duplicate: true,
                },
                None => return Err(refusal.into()),
            },
        };
        crate::bus::wake::publish(&self.js, id, sent.seq)
            .await
            .map_err(|e| ApiError::Wake(BusError::nats("publishing a wake", e).to_string()))?;
        Ok(sent)
    }

    /// The sequence of an event of the same type and id already in the session's log.
    async fn find(&self, id: &SessionId, event: &Event) -> Result<Option<u64>, ApiError> {
        let same_type = self
            .log
            .read(
                id,
                &Slice {
                    types: vec![event.type_name().to_string()],
                    ..Default::default()
                },
            )
            .await?;
        Ok(same_type
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find(|r| r.event.id == event.id)
            .map(|r| r.seq))
    }

    /// Sends a user message (with a client-chosen id, for idempotent retries, or a fresh one).
    pub async fn message(
        &self,
        id: &SessionId,
        event_id: Option<EventId>,
        text: &str,
    ) -> Result<(Event, Sent), ApiError> {
        let event = Event::with_id(
            event_id.unwrap_or_else(EventId::generate),
            UserMessage {
                content: vec![ContentBlock::text(text)],
            },
        );
        let sent = self.send(id, &event).await?;
        Ok((event, sent))
    }

    /// Asks the running turn to stop at the next step boundary.
    pub async fn interrupt(&self, id: &SessionId) -> Result<(Event, Sent), ApiError> {
        let event = Event::new(UserInterrupt {});
        let sent = self.send(id, &event).await?;
        Ok((event, sent))
    }

    /// Allows or denies a call that waits for confirmation.
    pub async fn confirm(
        &self,
        id: &SessionId,
        tool_use_id: &str,
        allow: bool,
        deny_message: Option<String>,
    ) -> Result<(Event, Sent), ApiError> {
        let event = Event::new(UserToolConfirmation {
            tool_use_id: tool_use_id.to_string(),
            result: if allow { "allow" } else { "deny" }.into(),
            deny_message,
        });
        let sent = self.send(id, &event).await?;
        Ok((event, sent))
    }

    /// Answers a custom tool call.
    pub async fn answer_custom_tool(
        &self,
        id: &SessionId,
        tool_use_id: &str,
        text: &str,
        is_error: bool,
    ) -> Result<(Event, Sent), ApiError> {
        let event = Event::new(UserCustomToolResult {
            custom_tool_use_id: tool_use_id.to_string(),
            content: vec![ContentBlock::text(text)],
            is_error,
        });
        let sent = self.send(id, &event).await?;
        Ok((event, sent))
    }

    /// Replaces a session's limits (a `session.updated`), for instance to raise one that
    /// paused it; the next message resumes the session. The budget is kept: it changes only
    /// through [`Api::update_budget`]. Operator and gateway only.
    pub async fn update_limits(
        &self,
        id: &SessionId,
        limits: SessionLimits,
    ) -> Result<(Event, Sent), ApiError> {
        self.update(id, Some(limits), None).await
    }

    /// Raises a session's budget, or removes it (`None`, for good): the Managed Agents API's
    /// `budget` in a session update. A session without a budget cannot get one
    /// (`budget_create_only`), and a budget below what the session has spent is refused
    /// (`budget_not_raised`). The next message resumes a session the budget paused.
    pub async fn update_budget(
        &self,
        id: &SessionId,
        budget: Option<Budget>,
    ) -> Result<(Event, Sent), ApiError> {
        self.update(id, None, Some(budget)).await
    }

    /// Appends the `session.updated` that sets new limits (the budget kept unless `budget`
    /// changes it), after the rules of each.
    pub async fn update(
        &self,
        id: &SessionId,
        limits: Option<SessionLimits>,
        budget: Option<Option<Budget>>,
    ) -> Result<(Event, Sent), ApiError> {
        if !self.principal.may_instruct {
            return Err(Refusal::Instruct(self.principal.name.clone()).into());
        }
        if limits.is_none() && budget.is_none() {
            return Err(
                ConfigError::Invalid("nothing to update: give limits or a budget".into()).into(),
            );
        }
        if limits.as_ref().is_some_and(|l| l.budget.is_some()) {
            return Err(ConfigError::Invalid(
                "the budget is not replaced with the limits: update it on its own".into(),
            )
            .into());
        }
        let state = self.current(id).await?;
        if state.event_count == 0 {
            return Err(Refusal::NotFound(id.clone()).into());
        }
        if state.status == crate::session::Status::Terminated {
            return Err(Refusal::Terminated(id.clone()).into());
        }
        let mut new = limits.unwrap_or_else(|| state.limits.clone());
        new.budget = match budget {
            None => state.limits.budget.clone(),
            Some(b) => {
                let model = state.config.as_ref().map_or("", |c| c.agent.model.as_str());
                self.prices.update_budget(
                    model,
                    state.limits.budget.as_ref(),
                    b,
                    state.spent_nano_usd().unwrap_or(0),
                )?
            }
        };
        let event = Event::new(crate::event::SessionUpdated {
            title: None,
            metadata: None,
            limits: Some(new),
        });
        let sent = self.log.append_fact(id, &event).await?.into();
        Ok((event, sent))
    }

    /// Renames a session or replaces its metadata (a `session.updated` with those fields).
    /// Operator and gateway only.
    pub async fn describe(
        &self,
        id: &SessionId,
        title: Option<String>,
        metadata: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<Sent, ApiError> {
        if !self.principal.may_instruct {
            return Err(Refusal::Instruct(self.principal.name.clone()).into());
        }
        let state = self.current(id).await?;
        if state.event_count == 0 {
            return Err(Refusal::NotFound(id.clone()).into());
        }
        if state.status == crate::session::Status::Terminated {
            return Err(Refusal::Terminated(id.clone()).into());
        }
        let event = Event::new(crate::event::SessionUpdated {
            title,
            metadata,
            limits: None,
        });
        Ok(self.log.append_fact(id, &event).await?.into())
    }

    /// Reads a slice of a session's log; a session without events is not found.
    pub async fn read(&self, id: &SessionId, slice: &Slice) -> Result<Vec<Record>, ApiError> {
        self.may_see(id).await?;
        let records = self.log.read(id, slice).await?;
        if records.is_empty() && self.log.last_sequence(id).await? == 0 {
            return Err(LogError::NotFound(id.clone()).into());
        }
        Ok(records)
    }

    /// Refuses, as not found, a session the principal may not see (another tenant's): from
    /// the cached fold when there is one, else from the session's `session.created` alone.
    pub async fn may_see(&self, id: &SessionId) -> Result<(), ApiError> {
        if self.principal.tenant.is_none() {
            return Ok(());
        }
        let cached = self
            .states
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|s| s.config.clone()));
        let config = match cached {
            Some(config) => config,
            None => self.log.created(id).await?,
        };
        Ok(self.principal.may_see(id, config.as_ref())?)
    }

    /// Follows a session live from sequence `from` (see [`SessionLog::follow`]), if the
    /// principal may see it.
    pub async fn follow(
        &self,
        id: &SessionId,
        from: u64,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Record, LogError>>, ApiError> {
        self.may_see(id).await?;
        Ok(self.log.follow(id, from).await?)
    }

    /// A session's current state, folded from its log.
    pub async fn state(&self, id: &SessionId) -> Result<SessionState, ApiError> {
        self.current(id).await
    }
}
