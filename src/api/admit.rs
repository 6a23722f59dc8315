//! The admission rule: may this event from outside be appended to this session now? One pure
//! function, used by every front door — the CLI, the wake consumer (events a wake carries) and
//! the gateway — so a rule holds whichever door an event comes through.

use crate::event::{ContentBlock, Event, EventBody, SessionId};
use crate::session::{SessionState, Status, ToolKind};

pub use crate::bus::wake::ACCEPTED_TYPES;

/// Why an event was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The session has no events.
    #[error("session {0} does not exist")]
    NotFound(SessionId),
    /// The session has no `session.created`: nothing can run it.
    #[error("session {0} has no session.created event")]
    NotCreated(SessionId),
    /// The session ended for good.
    #[error("session {0} is terminated and takes no more events")]
    Terminated(SessionId),
    /// The event is not one a front door may append.
    #[error("a {0:?} cannot be sent to a session; only {accepted} can", accepted = ACCEPTED_TYPES.join(", "))]
    Type(String),
    /// A message without any content.
    #[error("the message is empty")]
    Empty,
    /// An event id of herd's derived form (`sevt_<kind>_…`).
    #[error("event id {0:?} has the form of an id herd derives (sevt_<kind>_…); choose another")]
    ReservedId(String),
    /// A confirmation that is neither `allow` nor `deny`.
    #[error("a confirmation's result must be allow or deny, not {0:?}")]
    Decision(String),
    /// A confirmation for a call that is not waiting for one.
    #[error("session {session} has no call {tool_use_id} waiting for a confirmation")]
    NotAwaitingConfirmation {
        /// The session.
        session: SessionId,
        /// The call named.
        tool_use_id: String,
    },
    /// A session that names a vault its creator may not use.
    #[error(
        "{principal} may not use vault {vault:?}; a session names only vaults its creator may use"
    )]
    Vault {
        /// Who asked.
        principal: String,
        /// The vault named.
        vault: String,
    },
    /// A `system.message` from someone who may not instruct agents.
    #[error(
        "{0} may not append a system.message: only the operator and the gateway instruct agents"
    )]
    Instruct(String),
    /// A tenant creating a session that does not name it as its origin.
    #[error("a session made for tenant {0} must name that tenant as its origin")]
    Origin(String),
    /// A custom tool result for a call that is not waiting for one.
    #[error("session {session} has no custom tool call {tool_use_id} waiting for a result")]
    NotAwaitingResult {
        /// The session.
        session: SessionId,
        /// The call named.
        tool_use_id: String,
    },
}

impl Refusal {
    /// True when the event itself is malformed (whatever the session's state), as opposed to
    /// arriving at a session that cannot take it now.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            Self::Type(_) | Self::Empty | Self::Decision(_) | Self::ReservedId(_)
        )
    }

    /// True when the caller may not do this at all.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            Self::Vault { .. } | Self::Instruct(_) | Self::Origin(_)
        )
    }

    /// True when the session is not there to take it.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// True for content with nothing in it: no blocks, or only text blocks of whitespace.
fn blank(content: &[ContentBlock]) -> bool {
    content
        .iter()
        .all(|b| b.as_text().is_some_and(|t| t.trim().is_empty()))
}

/// Who is asking, as a front door knows them: the CLI's operator, or (with the gateway) a
/// tenant. The door supplies it; the rules below never trust a request to say who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A name for errors and audit.
    pub name: String,
    /// The vaults its sessions may name.
    pub vaults: VaultGrant,
    /// Whether it may append `system.message` (instructions that outrank the user's).
    pub may_instruct: bool,
    /// The tenant whose sessions alone it sees (a gateway's tenant); `None` sees every session.
    pub tenant: Option<String>,
}

/// Which vaults a principal's sessions may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultGrant {
    /// Any vault (the operator's).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl Principal {
    /// The deployment's operator: any vault, may instruct.
    pub fn operator() -> Self {
        Self {
            name: "the operator".into(),
            vaults: VaultGrant::Any,
            may_instruct: true,
            tenant: None,
        }
    }

    /// Whether it may see a session of this configuration: a tenant sees only the sessions
    /// whose `session.created` names it as their origin's tenant, and to it every other
    /// session does not exist (a 404, never a 403 that would confirm the id).
    pub fn may_see(
        &self,
        id: &SessionId,
        config: Option<&crate::event::SessionCreated>,
    ) -> Result<(), Refusal> {
        match &self.tenant {
            None => Ok(()),
            Some(t)
                if config
                    .and_then(|c| c.origin.as_ref())
                    .is_some_and(|o| &o.tenant == t) =>
            {
                Ok(())
            }
            Some(_) => Err(Refusal::NotFound(id.clone())),
        }
    }

    /// Checks who a new session says made it: a tenant's sessions carry that tenant as their
    /// origin, so they are its own (and only its own) from their first event.
    pub fn may_create(&self, config: &crate::event::SessionCreated) -> Result<(), Refusal> {
        match (&self.tenant, config.origin.as_ref().map(|o| &o.tenant)) {
            (None, _) => Ok(()),
            (Some(t), Some(o)) if t == o => Ok(()),
            (Some(t), _) => Err(Refusal::Origin(t.clone())),
        }
    }

    /// Checks the vaults a new session names.
    pub fn may_use_vaults(&self, vaults: &[String]) -> Result<(), Refusal> {
        match &self.vaults {
            VaultGrant::Any => Ok(()),
            VaultGrant::Only(mine) => match vaults.iter().find(|v| !mine.contains(v)) {
                Some(v) => Err(Refusal::Vault {
                    principal: self.name.clone(),
                    vault: v.clone(),
                }),
                None => Ok(()),
            },
        }
    }
}

/// [`admit`] for a principal: a `system.message` is admitted from those who may instruct,
/// on the same conditions as any other event.
pub fn admit_from(
    principal: &Principal,
    state: &SessionState,
    event: &Event,
) -> Result<(), Refusal> {
    principal.may_see(&state.id, state.config.as_ref())?;
    if event.type_name() == "system.message" {
        if !principal.may_instruct {
            return Err(Refusal::Instruct(principal.name.clone()));
        }
        return admit_to(state, event);
    }
    admit(state, event)
}

/// Decides whether `event` may be appended to the session in `state`.
pub fn admit(state: &SessionState, event: &Event) -> Result<(), Refusal> {
    if !ACCEPTED_TYPES.contains(&event.type_name()) {
        return Err(Refusal::Type(event.type_name().to_string()));
    }
    admit_to(state, event)
}

fn check_id(event: &Event) -> Result<(), Refusal> {
    if event.id.is_derived() {
        return Err(Refusal::ReservedId(event.id.to_string()));
    }
    Ok(())
}

/// The rules past the type: content, the session's existence and state, what waits.
fn admit_to(state: &SessionState, event: &Event) -> Result<(), Refusal> {
    check_id(event)?;
    let id = || state.id.clone();
    match &event.body {
        EventBody::UserMessage(m) if blank(&m.content) => return Err(Refusal::Empty),
        EventBody::UserToolConfirmation(c) if !matches!(c.result.as_str(), "allow" | "deny") => {
            return Err(Refusal::Decision(c.result.clone()));
        }
        _ => {}
    }
    if state.event_count == 0 {
        return Err(Refusal::NotFound(id()));
    }
    if state.config.is_none() {
        return Err(Refusal::NotCreated(id()));
    }
    if state.status == Status::Terminated {
        return Err(Refusal::Terminated(id()));
    }
    match &event.body {
        EventBody::UserToolConfirmation(c)
            if !state
                .pending_tools
                .get(&c.tool_use_id)
                .is_some_and(|t| t.awaiting_confirmation) =>
        {
            Err(Refusal::NotAwaitingConfirmation {
                session: id(),
                tool_use_id: c.tool_use_id.clone(),
            })
        }
        EventBody::UserCustomToolResult(r)
            if !state
                .pending_tools
                .get(&r.custom_tool_use_id)
                .is_some_and(|t| t.kind == ToolKind::Custom) =>
        {
            Err(Refusal::NotAwaitingResult {
                session: id(),
                tool_use_id: r.custom_tool_use_id.clone(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    struct Log(Vec<StoredEvent>);

    impl Log {
        fn created() -> Self {
            Self(vec![]).and(SessionCreated::new(AgentConfig::new("m")))
        }
        fn and(mut self, body: impl Into<EventBody>) -> Self {
            let seq = self.0.len() as u64 + 1;
            self.0.push(StoredEvent {
                session_id: SessionId::parse("s").unwrap(),
                seq,
                event: Event::new(body),
            });
            self
        }
        fn admit(&self, body: impl Into<EventBody>) -> Result<(), Refusal> {
            let state = SessionState::fold(SessionId::parse("s").unwrap(), &self.0);
            admit(&state, &Event::new(body))
        }
    }

    fn say(t: &str) -> UserMessage {
        UserMessage {
            content: vec![ContentBlock::text(t)],
        }
    }

    fn asked(id: &str) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: "bash".into(),
            input: serde_json::json!({}),
            evaluated_permission: Some(EvaluatedPermission::Ask),
        }
    }

    fn confirm(id: &str, result: &str) -> UserToolConfirmation {
        UserToolConfirmation {
            tool_use_id: id.into(),
            result: result.into(),
            deny_message: None,
        }
    }

    #[test]
    fn a_live_session_takes_messages_and_interrupts() {
        let log = Log::created();
        assert_eq!(log.admit(say("hi")), Ok(()));
        assert_eq!(log.admit(UserInterrupt {}), Ok(()));
        assert_eq!(log.admit(say("  ")), Err(Refusal::Empty));
    }

    #[test]
    fn nothing_is_admitted_to_a_missing_or_terminated_session() {
        assert!(Log(vec![]).admit(say("hi")).unwrap_err().is_not_found());
        let ended = Log::created().and(SessionStatusTerminated {
            reason: "done".into(),
        });
        assert!(matches!(
            ended.admit(say("hi")),
            Err(Refusal::Terminated(_))
        ));
        let headless = Log(vec![]).and(say("first"));
        assert!(matches!(
            headless.admit(say("hi")),
            Err(Refusal::NotCreated(_))
        ));
    }

    #[test]
    fn herds_own_derived_ids_are_reserved() {
        let log = Log::created();
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &log.0);
        let planted = Event::with_id(
            EventId::derived("result", &["0123456789abcdef", "toolu_1"]).unwrap(),
            say("I am a tool result"),
        );
        assert!(matches!(
            admit(&state, &planted),
            Err(Refusal::ReservedId(_))
        ));
        let generated = Event::new(say("hi"));
        assert!(!generated.id.is_derived());
        assert_eq!(admit(&state, &generated), Ok(()));
    }

    #[test]
    fn only_what_users_and_clients_say_is_admitted() {
        let r = Log::created().admit(AgentMessage { content: vec![] });
        assert!(r.as_ref().unwrap_err().is_invalid(), "{r:?}");
    }

    #[test]
    fn instructions_and_vaults_depend_on_who_asks() {
        let log = Log::created();
        let state = SessionState::fold(SessionId::parse("s").unwrap(), &log.0);
        let sys = Event::new(SystemMessage {
            content: vec![ContentBlock::text("be terse")],
        });
        assert!(
            admit(&state, &sys).is_err(),
            "wakes never carry instructions"
        );
        assert_eq!(admit_from(&Principal::operator(), &state, &sys), Ok(()));
        let tenant = Principal {
            name: "tenant t1".into(),
            vaults: VaultGrant::Only(vec!["v1".into()]),
            may_instruct: false,
            tenant: None,
        };
        assert!(
            admit_from(&tenant, &state, &sys)
                .unwrap_err()
                .is_forbidden()
        );
        assert_eq!(tenant.may_use_vaults(&["v1".into()]), Ok(()));
        let e = tenant
            .may_use_vaults(&["v1".into(), "v2".into()])
            .unwrap_err();
        assert!(e.to_string().contains("may not use vault \"v2\""), "{e}");
        assert_eq!(
            Principal::operator().may_use_vaults(&["any".into()]),
            Ok(())
        );
    }

    #[test]
    fn answers_must_answer_a_call_that_waits_for_them() {
        let log = Log::created().and(asked("t1"));
        assert_eq!(log.admit(confirm("t1", "allow")), Ok(()));
        assert!(matches!(
            log.admit(confirm("t2", "allow")),
            Err(Refusal::NotAwaitingConfirmation { .. })
        ));
        assert_eq!(
            log.admit(confirm("t1", "maybe")),
            Err(Refusal::Decision("maybe".into()))
        );
        let answered = log.and(confirm("t1", "deny"));
        assert!(answered.admit(confirm("t1", "allow")).is_err());
        let custom = UserCustomToolResult {
            custom_tool_use_id: "t1".into(),
            content: vec![],
            is_error: false,
        };
        assert!(matches!(
            Log::created().admit(custom),
            Err(Refusal::NotAwaitingResult { .. })
        ));
    }

    #[test]
    fn a_tenant_sees_and_makes_only_its_own_sessions() {
        let mine = SessionCreated {
            origin: Some(Origin {
                tenant: "t1".into(),
                agent: serde_json::json!({}),
                environment: serde_json::json!({}),
            }),
            ..SessionCreated::new(AgentConfig::new("m"))
        };
        let theirs = SessionCreated {
            origin: Some(Origin {
                tenant: "t2".into(),
                ..mine.origin.clone().unwrap()
            }),
            ..mine.clone()
        };
        let plain = SessionCreated::new(AgentConfig::new("m"));
        let t1 = Principal {
            tenant: Some("t1".into()),
            ..Principal::operator()
        };
        let id = SessionId::parse("s").unwrap();
        assert_eq!(t1.may_see(&id, Some(&mine)), Ok(()));
        for other in [Some(&theirs), Some(&plain), None] {
            assert!(t1.may_see(&id, other).unwrap_err().is_not_found());
        }
        assert_eq!(Principal::operator().may_see(&id, Some(&theirs)), Ok(()));
        assert_eq!(t1.may_create(&mine), Ok(()));
        assert!(t1.may_create(&theirs).unwrap_err().is_forbidden());
        assert!(t1.may_create(&plain).unwrap_err().is_forbidden());
        // The rule holds for sending too, whatever the event.
        let mut log = Log::created();
        log.0[0].event = Event::new(theirs);
        let state = SessionState::fold(id.clone(), &log.0);
        let err = admit_from(&t1, &state, &Event::new(say("hi"))).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
}
