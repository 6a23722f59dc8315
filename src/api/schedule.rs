//! Scheduled wakes, as every front door offers them: set one on a session (by name; setting a
//! name again replaces it), list them, cancel one. Each is recorded in the session's log
//! (`session.schedule_set`, `session.schedule_cancelled`); each firing is recorded by the brain
//! that takes it (`session.schedule_fired`). See `bus::schedules`.

use super::{Api, ApiError};
use crate::bus::schedules::{self, Definition, ScheduleError, Spec};
use crate::event::{Event, SessionId, SessionScheduleCancelled, SessionScheduleSet};
use crate::session::Status;

impl Api {
    /// Sets (or replaces) the session's scheduled wake `name`: at `spec` (`at …`, `in …`,
    /// `every …`, `cron …`) the session is told `prompt`.
    pub async fn set_schedule(
        &self,
        id: &SessionId,
        name: &str,
        spec: &str,
        prompt: &str,
    ) -> Result<Definition, ApiError> {
        schedules::check_name(name)?;
        schedules::check_prompt(prompt)?;
        let spec = Spec::parse(spec, time::OffsetDateTime::now_utc())?;
        let state = self.current(id).await?;
        if state.event_count == 0 {
            return Err(super::Refusal::NotFound(id.clone()).into());
        }
        if state.status == Status::Terminated {
            return Err(ScheduleError::Invalid(format!(
                "session {id} is terminated: it cannot be woken"
            ))
            .into());
        }
        let def = Definition {
            session_id: id.to_string(),
            name: name.to_string(),
            spec: spec.text(),
            prompt: prompt.to_string(),
        };
        schedules::set(&self.js, &def, &spec).await?;
        self.log
            .append_fact(
                id,
                &Event::new(SessionScheduleSet {
                    name: def.name.clone(),
                    spec: def.spec.clone(),
                    prompt: def.prompt.clone(),
                }),
            )
            .await?;
        Ok(def)
    }

    /// The session's scheduled wakes.
    pub async fn schedules(&self, id: &SessionId) -> Result<Vec<Definition>, ApiError> {
        self.may_see(id).await?;
        self.existing(id).await?;
        Ok(schedules::list(&self.js, id).await?)
    }

    /// Cancels the session's scheduled wake `name`; it never fires again.
    pub async fn cancel_schedule(&self, id: &SessionId, name: &str) -> Result<(), ApiError> {
        self.may_see(id).await?;
        self.existing(id).await?;
        schedules::cancel(&self.js, id, name).await?;
        self.log
            .append_fact(
                id,
                &Event::new(SessionScheduleCancelled {
                    name: name.to_string(),
                }),
            )
            .await?;
        Ok(())
    }

    async fn existing(&self, id: &SessionId) -> Result<(), ApiError> {
        if self.log.created(id).await?.is_none() {
            return Err(super::Refusal::NotFound(id.clone()).into());
        }
        Ok(())
    }
}
