//! `{{secret:NAME}}` placeholders: finding them, substituting values, and redacting values from
//! what goes back to the model. Pure string work, so every rule is unit-tested.
//!
//! The model writes placeholders; it never sees a value. Anything that looks like the start of
//! a placeholder must be a well-formed one, so a typo is a clear error rather than a literal
//! `{{secret:` sent to a server.

use std::collections::BTreeSet;

const OPEN: &str = "{{secret:";
const CLOSE: &str = "}}";

/// Why text with placeholders was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// `{{secret:` without a closing `}}`.
    #[error("a placeholder is not closed: expected {{{{secret:NAME}}}} (at byte {at})")]
    Unclosed {
        /// Where it starts.
        at: usize,
    },
    /// A name that is empty or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid secret name {name:?} in a placeholder: use letters, digits, '_' and '-'")]
    BadName {
        /// The name as written (never a value: it came from the model).
        name: String,
    },
}

/// The names of the placeholders in `text`, in order of first use.
pub fn names(text: &str) -> Result<Vec<String>, PlaceholderError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            return Err(PlaceholderError::Unclosed { at: offset + i });
        };
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(PlaceholderError::BadName {
                name: name.chars().take(64).collect(),
            });
        }
        if seen.insert(name.to_string()) {
            out.push(name.to_string());
        }
        let consumed = i + OPEN.len() + end + CLOSE.len();
        offset += consumed;
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Replaces every placeholder with its value; `value_of` is asked only for names that
/// [`names`] accepted.
pub fn substitute(text: &str, value_of: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let name = &after[..end];
        out.push_str(&rest[..i]);
        match value_of(name) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[i..i + OPEN.len() + end + CLOSE.len()]),
        }
        rest = &rest[i + OPEN.len() + end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

/// Replaces every occurrence of each secret form with `[secret NAME]`. Longer forms go first,
/// so a value that contains another is redacted whole.
pub fn redact(text: &str, forms: &[(String, String)]) -> String {
    let mut forms: Vec<&(String, String)> = forms.iter().filter(|(_, f)| !f.is_empty()).collect();
    forms.sort_by_key(|(_, f)| std::cmp::Reverse(f.len()));
    let mut out = text.to_string();
    for (name, form) in forms {
        if out.contains(form.as_str()) {
            out = out.replace(form.as_str(), &format!("[secret {name}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_once_each_in_order() {
        assert_eq!(
            names("a {{secret:B}} c {{secret:a_1}} {{secret:B}}").unwrap(),
            ["B", "a_1"]
        );
        assert!(names("no placeholders {{ here }}").unwrap().is_empty());
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        assert_eq!(
            names("x {{secret:TOKEN").unwrap_err(),
            PlaceholderError::Unclosed { at: 2 }
        );
        assert!(matches!(
            names("{{secret:}}"),
            Err(PlaceholderError::BadName { .. })
        ));
        assert!(matches!(
            names("{{secret:a b}}"),
            Err(PlaceholderError::BadName { .. })
        ));
        assert!(matches!(
            names("{{secret:a.b}}"),
            Err(PlaceholderError::BadName { .. })
        ));
    }

    #[test]
    fn substitution_and_redaction_round_trip() {
        let s = substitute("Bearer {{secret:T}} and {{secret:U}}", |n| {
            (n == "T").then(|| "tok-123".to_string())
        });
        assert_eq!(s, "Bearer tok-123 and {{secret:U}}");
        let forms = vec![
            ("T".to_string(), "tok-123".to_string()),
            ("L".to_string(), "tok-123-long".to_string()),
        ];
        assert_eq!(
            redact("echo: Bearer tok-123, tok-123-long", &forms),
            "echo: Bearer [secret T], [secret L]"
        );
    }
}
