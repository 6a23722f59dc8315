//! Model providers: one request shape in, one response shape out.
//!
//! The request is Anthropic-shaped (system, tools, messages of content blocks), since herd's
//! events already hold content blocks in that shape; the OpenAI-compatible provider translates.
//! Every provider streams, so a hung provider is bounded by an idle timeout between chunks as
//! well as a total timeout, and a stream cut mid-response is a retryable error, never a
//! truncated answer.

mod anthropic;
mod openai;
mod scripted;
mod sse;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use anthropic::Anthropic;
pub use openai::OpenAi;
pub use scripted::{Scripted, ScriptedTurn};

use crate::config::Secret;
use crate::event::{AgentConfig, ContentBlock, Usage};

/// A message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// Content blocks (text, tool_use, tool_result, thinking, …).
    pub content: Vec<Value>,
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// One model request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The model id.
    pub model: String,
    /// The system prompt.
    pub system: Option<String>,
    /// The tools.
    pub tools: Vec<ToolDef>,
    /// The conversation; alternates user and assistant, starting and ending with user.
    pub messages: Vec<Message>,
    /// Output-token limit.
    pub max_tokens: u32,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse {
    /// Content blocks exactly as the provider sent them (text, thinking with signatures,
    /// tool_use with parsed input, …).
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `tool_use`, `max_tokens`, `stop_sequence`, …
    pub stop_reason: String,
    /// Tokens used.
    pub usage: Usage,
}

/// Why a model request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// Worth retrying: 429, 5xx, 529, timeouts, connection failures, streams cut short.
    #[error("{message}")]
    Retryable {
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// What happened (never contains a key).
        message: String,
    },
    /// Retrying will not help: bad request, authentication, unknown model.
    #[error("{message}")]
    Fatal {
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// What happened (never contains a key).
        message: String,
    },
}

impl ModelError {
    /// The error's type for a `session.error` event.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable {
                status: Some(429), ..
            } => "rate_limit_error",
            Self::Retryable {
                status: Some(529), ..
            } => "overloaded_error",
            Self::Retryable {
                status: Some(_), ..
            } => "api_error",
            Self::Retryable { status: None, .. } => "model_unavailable_error",
            Self::Fatal {
                status: Some(401 | 403),
                ..
            } => "authentication_error",
            Self::Fatal { .. } => "invalid_request_error",
        }
    }

    /// Classifies an HTTP error status.
    pub(crate) fn from_status(status: u16, retry_after: Option<Duration>, body: &str) -> Self {
        // Authentication errors may echo part of the key (OpenAI shows its last characters):
        // their body is dropped. Other bodies are kept short, for the session's error event.
        let message = if status == 401 || status == 403 {
            format!(
                "the model API answered HTTP {status} (authentication failed; check the brain's API key)"
            )
        } else {
            let body: String = body.chars().take(500).collect();
            format!("the model API answered HTTP {status}: {body}")
        };
        if status == 408 || status == 409 || status == 429 || status >= 500 {
            Self::Retryable {
                status: Some(status),
                retry_after,
                message,
            }
        } else {
            Self::Fatal {
                status: Some(status),
                message,
            }
        }
    }

    pub(crate) fn transport(e: reqwest::Error) -> Self {
        // reqwest's messages name the URL but never headers, so no key can leak through them.
        Self::Retryable {
            status: None,
            retry_after: None,
            message: format!("cannot reach the model API: {e}"),
        }
    }
}

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for the response headers or between two chunks of the stream.
    pub idle: Duration,
    /// Longest whole request.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

/// Where and how to reach the model APIs; from the providers' usual environment variables,
/// overridable in the brain's config.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// `ANTHROPIC_API_KEY`.
    pub anthropic_api_key: Option<Secret>,
    /// `ANTHROPIC_BASE_URL` (default `https://api.anthropic.com`).
    pub anthropic_base_url: Option<String>,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<Secret>,
    /// `OPENAI_BASE_URL` (default `https://api.openai.com/v1`).
    pub openai_base_url: Option<String>,
    /// Timeouts of each request.
    pub timeouts: Timeouts,
}

impl ProviderSettings {
    /// Reads the providers' environment variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            anthropic_api_key: var("ANTHROPIC_API_KEY").map(Secret::new),
            anthropic_base_url: var("ANTHROPIC_BASE_URL"),
            openai_api_key: var("OPENAI_API_KEY").map(Secret::new),
            openai_base_url: var("OPENAI_BASE_URL"),
            timeouts: Timeouts::default(),
        }
    }
}

/// The providers a brain can call, chosen per session by its agent configuration.
#[derive(Clone)]
pub struct Providers {
    http: reqwest::Client,
    settings: ProviderSettings,
}

/// Which provider serves an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp).
    OpenAi,
    /// A fixed script; no network.
    Scripted,
}

impl ProviderKind {
    /// The provider named in an agent configuration, or inferred from the model name.
    pub fn for_agent(provider: Option<&str>, model: &str) -> Result<Self, String> {
        match provider {
            Some("anthropic") => Ok(Self::Anthropic),
            Some("openai") => Ok(Self::OpenAi),
            Some("scripted") => Ok(Self::Scripted),
            Some(other) => Err(format!(
                "unknown provider {other:?}; expected anthropic, openai or scripted"
            )),
            None if model.starts_with("claude") => Ok(Self::Anthropic),
            None if model == "scripted" || model.starts_with("scripted:") => Ok(Self::Scripted),
            None => Ok(Self::OpenAi),
        }
    }
}

impl Providers {
    /// Builds the HTTP client.
    pub fn new(settings: ProviderSettings) -> Self {
        crate::tls::install_crypto();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(settings.timeouts.idle)
            .build()
            .unwrap_or_default();
        Self { http, settings }
    }

    /// Sends one request for `agent` to the provider its configuration names; an agent whose
    /// provider is unknown gets a fatal error (no request is made).
    pub async fn complete_for(
        &self,
        agent: &AgentConfig,
        request: &ModelRequest,
    ) -> Result<ModelResponse, ModelError> {
        match ProviderKind::for_agent(agent.provider.as_deref(), &agent.model) {
            Ok(kind) => self.complete(kind, agent, request).await,
            Err(message) => Err(ModelError::Fatal {
                status: None,
                message,
            }),
        }
    }

    /// Sends one request to the provider `kind` for `agent`.
    pub async fn complete(
        &self,
        kind: ProviderKind,
        agent: &AgentConfig,
        request: &ModelRequest,
    ) -> Result<ModelResponse, ModelError> {
        let total = self.settings.timeouts.total;
        let call = async {
            match kind {
                ProviderKind::Anthropic => {
                    let key =
                        self.settings
                            .anthropic_api_key
                            .as_ref()
                            .ok_or(ModelError::Fatal {
                                status: None,
                                message: "ANTHROPIC_API_KEY is not set for this brain".into(),
                            })?;
                    Anthropic {
                        http: &self.http,
                        base_url: self
                            .settings
                            .anthropic_base_url
                            .as_deref()
                            .unwrap_or("https://api.anthropic.com"),
                        api_key: key,
                        idle: self.settings.timeouts.idle,
                    }
                    .complete(request)
                    .await
                }
                ProviderKind::OpenAi => {
                    OpenAi {
                        http: &self.http,
                        base_url: self
                            .settings
                            .openai_base_url
                            .as_deref()
                            .unwrap_or("https://api.openai.com/v1"),
                        api_key: self.settings.openai_api_key.as_ref(),
                        idle: self.settings.timeouts.idle,
                    }
                    .complete(request)
                    .await
                }
                ProviderKind::Scripted => {
                    let scripted = Scripted::from_agent(agent);
                    tokio::time::sleep(scripted.delay_for(request)).await;
                    Ok(scripted.complete(request))
                }
            }
        };
        match tokio::time::timeout(total, call).await {
            Ok(r) => r,
            Err(_) => Err(ModelError::Retryable {
                status: None,
                retry_after: None,
                message: format!("the model request took longer than {total:?}"),
            }),
        }
    }
}

/// Reads `Retry-After` (seconds) from a response.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}
