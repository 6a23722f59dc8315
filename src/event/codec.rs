//! Encoding events to bytes and back.
//!
//! Writes are MessagePack maps with named fields (`rmp_serde::to_vec_named`'s layout), which
//! tolerate added and reordered fields. Reads accept MessagePack or JSON: the first byte tells
//! them apart (a JSON event starts with `{`, which in MessagePack would be the integer 123, never
//! a valid event). Both go through one JSON object, so the two encodings cannot drift.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Event, EventBody, EventId, check_type_name};

/// `Content-Type` of MessagePack payloads.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
/// `Content-Type` of JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The two encodings herd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// MessagePack with named fields (what herd writes).
    MessagePack,
    /// JSON (what other systems may publish).
    Json,
}

impl Encoding {
    /// Guesses the encoding of a payload from its first non-blank byte.
    pub fn sniff(payload: &[u8]) -> Self {
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Self::Json,
            _ => Self::MessagePack,
        }
    }
}

/// Why a payload is not a valid event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is empty.
    #[error("the payload is empty")]
    Empty,
    /// Neither valid MessagePack nor JSON.
    #[error("the payload is not valid {encoding}: {detail}")]
    Syntax {
        /// What it was read as.
        encoding: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// Valid syntax, but not an object.
    #[error("an event must be an object with \"id\" and \"type\", found {found}")]
    NotAnObject {
        /// What was found instead.
        found: &'static str,
    },
    /// A required envelope field is missing or of the wrong type.
    #[error("the event's {field:?} field is {problem}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The fields do not fit the event's type.
    #[error("the fields of a {type_name:?} event are invalid: {detail}")]
    Fields {
        /// The event's type.
        type_name: String,
        /// serde's message, naming the field.
        detail: String,
    },
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Removes a required string field from an event object.
fn take_string(
    fields: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, DecodeError> {
    match fields.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(DecodeError::Field {
            field,
            problem: format!("{}, not a string", kind_of(&v)),
        }),
        None => Err(DecodeError::Field {
            field,
            problem: "missing".into(),
        }),
    }
}

/// Parses a payload (MessagePack or JSON) into a JSON value, without interpreting it.
pub fn decode_to_json(payload: &[u8]) -> Result<Value, DecodeError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    match Encoding::sniff(payload) {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Syntax {
            encoding: "JSON",
            detail: e.to_string(),
        }),
        Encoding::MessagePack => {
            // Reading through a slice reference advances it, so what is left afterwards is
            // exactly the trailing bytes.
            let mut rest: &[u8] = payload;
            let value: Value =
                serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
                    .map_err(|e| DecodeError::Syntax {
                        encoding: "MessagePack",
                        detail: e.to_string(),
                    })?;
            if !rest.is_empty() {
                return Err(DecodeError::Syntax {
                    encoding: "MessagePack",
                    detail: format!("{} trailing bytes after the first value", rest.len()),
                });
            }
            Ok(value)
        }
    }
}

impl Event {
    /// The event as one flat JSON object (`id`, `type`, `processed_at` and the body's fields).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.to_string()));
        m.insert("type".into(), Value::String(self.type_name().to_string()));
        m.insert(
            "processed_at".into(),
            Value::String(format_time(self.processed_at)),
        );
        for (k, v) in self.body.to_fields() {
            // The envelope's fields win over a body field of the same name.
            m.entry(k).or_insert(v);
        }
        Value::Object(m)
    }

    /// Encodes the event as MessagePack with named fields.
    pub fn encode(&self) -> Vec<u8> {
        // A JSON value always encodes: its maps have string keys and its numbers fit.
        rmp_serde::to_vec_named(&self.to_json()).unwrap_or_default()
    }

    /// Decodes an event from MessagePack or JSON.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        Self::from_json(decode_to_json(payload)?)
    }

    /// Builds an event from its JSON object. `processed_at` may be absent (events published by
    /// other systems); it is then the time of decoding.
    pub fn from_json(value: Value) -> Result<Self, DecodeError> {
        let mut fields = match value {
            Value::Object(m) => m,
            other => {
                return Err(DecodeError::NotAnObject {
                    found: kind_of(&other),
                });
            }
        };
        let id =
            EventId::parse(take_string(&mut fields, "id")?).map_err(|e| DecodeError::Field {
                field: "id",
                problem: format!("invalid: {e}"),
            })?;
        let type_name = take_string(&mut fields, "type")?;
        check_type_name(&type_name).map_err(|problem| DecodeError::Field {
            field: "type",
            problem,
        })?;
        let processed_at = match fields.remove("processed_at") {
            Some(Value::String(s)) => {
                OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| DecodeError::Field {
                    field: "processed_at",
                    problem: format!("not an RFC 3339 time ({e})"),
                })?
            }
            None | Some(Value::Null) => OffsetDateTime::now_utc(),
            Some(v) => {
                return Err(DecodeError::Field {
                    field: "processed_at",
                    problem: format!("{}, not a string", kind_of(&v)),
                });
            }
        };
        let body = EventBody::from_fields(&type_name, fields).map_err(|e| DecodeError::Fields {
            type_name: type_name.clone(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            id,
            processed_at,
            body,
        })
    }
}

/// Formats a time as RFC 3339 in UTC with exactly three fractional digits
/// (`2026-11-21T05:39:43.120Z`), so stored times have one shape and sort as strings.
pub fn format_time(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn sample() -> Event {
        Event::new(UserMessage {
            content: vec![ContentBlock::text("hello")],
        })
    }

    #[test]
    fn msgpack_round_trip_uses_named_fields() {
        let e = sample();
        let bytes = e.encode();
        // A named-field map: the key "content" is in the bytes.
        assert!(bytes.windows(7).any(|w| w == b"content"));
        let back = Event::decode(&bytes).unwrap();
        assert_eq!(back.id, e.id);
        assert_eq!(back.body, e.body);
        assert_eq!(format_time(back.processed_at), format_time(e.processed_at));
    }

    #[test]
    fn times_have_three_fractional_digits() {
        let t = OffsetDateTime::parse("2026-11-21T05:39:43.1204Z", &Rfc3339).unwrap();
        assert_eq!(format_time(t), "2026-11-21T05:39:43.120Z");
        let t = OffsetDateTime::parse("2026-11-21T07:39:43+02:00", &Rfc3339).unwrap();
        assert_eq!(format_time(t), "2026-11-21T05:39:43.000Z");
    }

    #[test]
    fn json_is_accepted_and_processed_at_is_optional() {
        let e = Event::decode(
            br#"{"id":"evt-1","type":"user.message","content":[{"type":"text","text":"hi"}],"extra":1}"#,
        )
        .unwrap();
        match e.body {
            EventBody::UserMessage(m) => assert_eq!(content_text(&m.content), "hi"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_types_are_kept_whole() {
        let e = Event::decode(br#"{"id":"e1","type":"future.thing","a":{"b":[1,2]}}"#).unwrap();
        assert_eq!(e.type_name(), "future.thing");
        let again = Event::decode(&e.encode()).unwrap();
        assert_eq!(again.to_json()["a"]["b"][1], 2);
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"{not json", "not valid JSON"),
            (b"\xc1\xc1", "not valid MessagePack"),
            (b"[1,2]", "must be an object"),
            (br#"{"type":"user.message"}"#, "\"id\" field is missing"),
            (
                br#"{"id":"a.b","type":"user.message"}"#,
                "\"id\" field is invalid",
            ),
            (br#"{"id":"a","type":7}"#, "\"type\" field is a number"),
            (br#"{"id":"a","type":"User Message"}"#, "not valid"),
            (
                br#"{"id":"a","type":"user.message"}"#,
                "missing field `content`",
            ),
            (
                br#"{"id":"a","type":"user.message","content":[{"text":"x"}]}"#,
                "string \"type\"",
            ),
            (
                br#"{"id":"a","type":"user.message","processed_at":"yesterday","content":[]}"#,
                "RFC 3339",
            ),
        ];
        for (payload, want) in cases {
            let err = Event::decode(payload).unwrap_err().to_string();
            assert!(err.contains(want), "{payload:?}: {err}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode();
        bytes.push(0x01);
        assert!(
            Event::decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
    }
}
