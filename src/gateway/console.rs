//! `/console`: the web console, served by the gateway from assets compiled into the binary
//! (no Node toolchain, no library: the page is small enough that a hand-written renderer that
//! builds DOM nodes is safer than any Markdown library that produces HTML strings, which the
//! page's policy would have to allow).
//!
//! The console uses only the public API (with the key the person pastes, kept in the tab's
//! `sessionStorage` and sent in the `Authorization` header), so the console needs no route
//! of its own beyond its three files, and cannot see what the API would not show that key.
//!
//! Every answer here carries a Content-Security-Policy that lets the page run only its own
//! script and style, connect only to its own origin, load no image, frame or font from
//! anywhere, and (Trusted Types with no policy) never turn a string into HTML: model and
//! tool output is shown as text, never executed, and cannot restyle the page.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX: &str = include_str!("console/index.html");
/// Its script.
pub const SCRIPT: &str = include_str!("console/console.js");
/// Its style sheet.
pub const STYLE: &str = include_str!("console/console.css");

/// The policy every console answer carries.
pub const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /console`.
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /console/console.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /console/console.css`.
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// The bytes of the console's assets, for the benchmark's report.
pub fn asset_bytes() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_never_parses_html() {
        // Nothing the page loads comes from elsewhere, and nothing inline needs a hole in the
        // policy.
        assert!(INDEX.contains("src=\"/console/console.js\""));
        assert!(INDEX.contains("href=\"/console/console.css\""));
        assert!(!INDEX.contains("style="), "inline style would be refused");
        assert!(
            !INDEX.contains("<script>"),
            "inline script would be refused"
        );
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        assert!(
            !SCRIPT.contains("localStorage"),
            "the key stays in the tab only"
        );
        assert!(POLICY.contains("trusted-types 'none'"));
        // The timeline asks the stream for every event type herd has: none may be missing
        // from the console's list (a new type would otherwise never be shown).
        for t in crate::event::EventBody::KNOWN_TYPES {
            assert!(
                SCRIPT.contains(&format!("'{t}'")),
                "console.js TYPES lacks {t}"
            );
        }
    }
}
