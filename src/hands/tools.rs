//! The built-in toolset, named as in the Managed Agents toolset: `bash`, `read`, `write`,
//! `edit`, `glob`, `grep`. Every tool runs inside the session's sandbox through `exec`; the
//! hand never touches the workspace itself. Inputs come from the model and are validated here,
//! with errors the model can act on.

use std::time::Duration;

use serde_json::Value;

use super::sandbox::{ExecOutput, Sandbox, SandboxError, Sandboxes};

/// Output kept per stream before truncation. Results larger than the hand's inline limit go
/// to the object store whole, with their head and tail in the event.
pub const OUTPUT_CAP: usize = 1024 * 1024;
/// The longest file `write` and `edit` accept.
pub const MAX_FILE: usize = 1024 * 1024;
/// Default and longest `bash` timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `read` and `edit` may take to read a file (in the sandbox; then it is stopped).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a call may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// The text the model sees.
    pub text: String,
    /// Whether the call failed.
    pub is_error: bool,
}

impl ToolOutcome {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: false,
        }
    }
    fn err(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: true,
        }
    }
}

fn string<'a>(input: &'a Value, tool: &str, field: &str) -> Result<&'a str, ToolOutcome> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolOutcome::err(format!("{tool} needs a string {field:?} in its input")))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn truncation_note(out: &ExecOutput) -> String {
    if out.capped {
        format!(
            "\n[output truncated at {OUTPUT_CAP} bytes per stream: the command was stopped there ({} more bytes seen were not kept); redirect large output to a file and read parts of it]",
            out.dropped
        )
    } else if out.dropped > 0 {
        format!(
            "\n[output truncated: {} more bytes were not kept]",
            out.dropped
        )
    } else {
        String::new()
    }
}

/// Runs one tool call in a sandbox. A lost sandbox is returned as an error for the caller to
/// report (and replace the sandbox); every other failure is an outcome the model sees.
pub async fn run(
    sandboxes: &Sandboxes,
    sandbox: &Sandbox,
    name: &str,
    input: &Value,
) -> Result<ToolOutcome, SandboxError> {
    let outcome = match name {
        "bash" => bash(sandboxes, sandbox, input).await?,
        "read" => read(sandboxes, sandbox, input).await?,
        "write" => write(sandboxes, sandbox, input).await?,
        "edit" => edit(sandboxes, sandbox, input).await?,
        "glob" => glob(sandboxes, sandbox, input).await?,
        "grep" => grep(sandboxes, sandbox, input).await?,
        other => ToolOutcome::err(format!("there is no built-in tool named {other:?}")),
    };
    Ok(outcome)
}

macro_rules! field {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(outcome) => return Ok(outcome),
        }
    };
}

async fn bash(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let command = field!(string(input, "bash", "command"));
    let timeout = input
        .get("timeout_secs")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
        .clamp(Duration::from_secs(1), MAX_TIMEOUT);
    // Bash when the image has it, else sh. `exec` runs it under the sandbox's own timeout, in
    // its own process group: a timeout kills the command's tree, not the sandbox.
    let script =
        r#"if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec sh -c "$1"; fi"#;
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "herd".into(),
        command.into(),
    ];
    let out = s.exec(sb, cmd, None, OUTPUT_CAP, timeout).await?;
    let code = out.exit_code.unwrap_or(-1);
    if out.timed_out {
        return Ok(ToolOutcome::err(format!(
            "The command timed out after {}s and was killed.\n--- stdout ---\n{}\n--- stderr ---\n{}{}",
            timeout.as_secs(),
            lossy(&out.stdout),
            lossy(&out.stderr),
            truncation_note(&out)
        )));
    }
    let mut text = format!("exit code: {code}");
    if !out.stdout.is_empty() {
        text.push_str(&format!("\n--- stdout ---\n{}", lossy(&out.stdout)));
    }
    if !out.stderr.is_empty() {
        text.push_str(&format!("\n--- stderr ---\n{}", lossy(&out.stderr)));
    }
    text.push_str(&truncation_note(&out));
    Ok(ToolOutcome::ok(text))
}

async fn cat(
    s: &Sandboxes,
    sb: &Sandbox,
    path: &str,
    cap: usize,
) -> Result<Result<ExecOutput, ToolOutcome>, SandboxError> {
    let out = s
        .exec(
            sb,
            vec!["cat".into(), "--".into(), path.into()],
            None,
            cap,
            READ_TIMEOUT,
        )
        .await?;
    if out.timed_out {
        return Ok(Err(ToolOutcome::err(format!(
            "cannot read {path}: it did not finish within {}s (a FIFO, a device or a very slow filesystem?); the read was stopped",
            READ_TIMEOUT.as_secs()
        ))));
    }
    if out.exit_code != Some(0) {
        return Ok(Err(ToolOutcome::err(format!(
            "cannot read {path}: {}",
            lossy(&out.stderr).trim()
        ))));
    }
    Ok(Ok(out))
}

async fn read(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let path = field!(string(input, "read", "path"));
    let out = match cat(s, sb, path, OUTPUT_CAP).await? {
        Ok(o) => o,
        Err(e) => return Ok(e),
    };
    let text = lossy(&out.stdout);
    let offset = input.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = input
        .get("limit")
        .and_then(Value::as_u64)
        .map(|l| l as usize);
    let body: String = match (offset, limit) {
        (0, None) => text,
        _ => text
            .lines()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Ok(ToolOutcome::ok(format!("{body}{}", truncation_note(&out))))
}

async fn put(
    s: &Sandboxes,
    sb: &Sandbox,
    path: &str,
    content: &[u8],
) -> Result<Option<ToolOutcome>, SandboxError> {
    let script = r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#;
    let out = s
        .exec(
            sb,
            vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "herd".into(),
                path.into(),
            ],
            Some(content.to_vec()),
            4096,
            Duration::from_secs(30),
        )
        .await?;
    if out.exit_code != Some(0) {
        return Ok(Some(ToolOutcome::err(format!(
            "cannot write {path}: {}",
            lossy(&out.stderr).trim()
        ))));
    }
    Ok(None)
}

async fn write(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let path = field!(string(input, "write", "path"));
    let content = field!(string(input, "write", "content"));
    if content.len() > MAX_FILE {
        return Ok(ToolOutcome::err(format!(
            "the content is {} bytes; write takes at most {MAX_FILE}",
            content.len()
        )));
    }
    if let Some(e) = put(s, sb, path, content.as_bytes()).await? {
        return Ok(e);
    }
    Ok(ToolOutcome::ok(format!(
        "wrote {} bytes to {path}",
        content.len()
    )))
}

async fn edit(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let path = field!(string(input, "edit", "path"));
    let old = field!(string(input, "edit", "old_string"));
    let new = field!(string(input, "edit", "new_string"));
    if old.is_empty() {
        return Ok(ToolOutcome::err("edit needs a non-empty old_string"));
    }
    let out = match cat(s, sb, path, MAX_FILE + 1).await? {
        Ok(o) => o,
        Err(e) => return Ok(e),
    };
    if out.stdout.len() > MAX_FILE || out.dropped > 0 {
        return Ok(ToolOutcome::err(format!(
            "{path} is larger than {MAX_FILE} bytes; edit it with bash"
        )));
    }
    let Ok(text) = String::from_utf8(out.stdout) else {
        return Ok(ToolOutcome::err(format!("{path} is not UTF-8 text")));
    };
    match text.matches(old).count() {
        0 => {
            return Ok(ToolOutcome::err(format!(
                "old_string was not found in {path}"
            )));
        }
        1 => {}
        n => {
            return Ok(ToolOutcome::err(format!(
                "old_string occurs {n} times in {path}; include more surrounding text so it is unique"
            )));
        }
    }
    let updated = text.replacen(old, new, 1);
    if let Some(e) = put(s, sb, path, updated.as_bytes()).await? {
        return Ok(e);
    }
    Ok(ToolOutcome::ok(format!("edited {path}")))
}

/// Matches one path segment against a pattern segment (`*`, `?`), in O(p * s) time.
fn segment_match(p: &[u8], s: &[u8]) -> bool {
    // dp[j] = pattern[..i] matches s[..j]
    let mut dp = vec![false; s.len() + 1];
    dp[0] = true;
    for &c in p {
        let mut next = vec![false; s.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=s.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=s.len() {
                next[j] = dp[j - 1] && (c == b'?' || c == s[j - 1]);
            }
        }
        dp = next;
    }
    dp[s.len()]
}

/// Matches a path against a glob: `*` and `?` within a segment, `**` across segments. Both
/// levels are dynamic programming, so no pattern can make it slow.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern
        .trim_start_matches("./")
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let s: Vec<&str> = path
        .trim_start_matches("./")
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let mut dp = vec![false; s.len() + 1];
    dp[0] = true;
    for seg in &p {
        let mut next = vec![false; s.len() + 1];
        if *seg == "**" {
            let mut any = false;
            for j in 0..=s.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=s.len() {
                next[j] = dp[j - 1] && segment_match(seg.as_bytes(), s[j - 1].as_bytes());
            }
        }
        dp = next;
    }
    dp[s.len()]
}

/// A path for commands that would read a leading `-` as an option (`find -delete`).
fn not_an_option(path: &str) -> String {
    if path.starts_with('-') {
        format!("./{path}")
    } else {
        path.to_string()
    }
}

async fn glob(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let pattern = field!(string(input, "glob", "pattern"));
    let root = not_an_option(input.get("path").and_then(Value::as_str).unwrap_or("."));
    let root = root.as_str();
    let out = s
        .exec(
            sb,
            vec!["find".into(), root.into(), "-type".into(), "f".into()],
            None,
            OUTPUT_CAP * 4,
            Duration::from_secs(60),
        )
        .await?;
    if out.exit_code != Some(0) && out.stdout.is_empty() {
        return Ok(ToolOutcome::err(format!(
            "cannot list {root}: {}",
            lossy(&out.stderr).trim()
        )));
    }
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let listing = lossy(&out.stdout);
    let mut lines: Vec<&str> = listing.lines().collect();
    // A file list cut at the cap (or by the timeout) may end in a partial line, and matches
    // past the cut are unknown: say so rather than answer "no files match".
    if (out.capped || out.timed_out) && !listing.ends_with('\n') {
        lines.pop();
    }
    let mut hits: Vec<String> = lines
        .into_iter()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
        .filter(|l| glob_match(pattern, l))
        .collect();
    hits.sort();
    let total = hits.len();
    hits.truncate(1000);
    let cut = if out.capped || out.timed_out {
        format!(
            "\n[the file list under {root} was cut after {} bytes{}: files past the cut were not searched; give a narrower path]",
            out.stdout.len(),
            if out.timed_out {
                " by the 60s timeout"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    if total == 0 {
        return Ok(ToolOutcome::ok(format!("no files match {pattern}{cut}")));
    }
    let more = if total > hits.len() {
        format!("\n[{} more matches not shown]", total - hits.len())
    } else {
        String::new()
    };
    Ok(ToolOutcome::ok(format!("{}{more}{cut}", hits.join("\n"))))
}

async fn grep(s: &Sandboxes, sb: &Sandbox, input: &Value) -> Result<ToolOutcome, SandboxError> {
    let pattern = field!(string(input, "grep", "pattern"));
    let root = input.get("path").and_then(Value::as_str).unwrap_or(".");
    let out = s
        .exec(
            sb,
            vec![
                "grep".into(),
                "-rnE".into(),
                "--".into(),
                pattern.into(),
                root.into(),
            ],
            None,
            OUTPUT_CAP,
            Duration::from_secs(60),
        )
        .await?;
    match out.exit_code {
        Some(0) => Ok(ToolOutcome::ok(format!(
            "{}{}",
            lossy(&out.stdout),
            truncation_note(&out)
        ))),
        Some(1) => Ok(ToolOutcome::ok(format!("no matches for {pattern}"))),
        _ => Ok(ToolOutcome::err(format!(
            "grep failed: {}",
            lossy(&out.stderr).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_segments_and_double_stars() {
        assert!(glob_match("*.py", "a.py"));
        assert!(!glob_match("*.py", "src/a.py"));
        assert!(glob_match("**/*.py", "src/deep/a.py"));
        assert!(glob_match("**/*.py", "a.py"));
        assert!(glob_match("src/?.rs", "src/a.rs"));
        assert!(!glob_match("src/?.rs", "src/ab.rs"));
        assert!(glob_match("./src/**", "src/x/y"));
    }

    #[test]
    fn pathological_globs_terminate() {
        // Exponential under a backtracking matcher (this test would run into nextest's
        // timeout); polynomial here.
        assert!(!glob_match(
            &format!("{}x", "*".repeat(40)),
            &"a".repeat(60)
        ));
        let deep = format!("{}y", "d/".repeat(40));
        assert!(!glob_match(&format!("{}x", "**/".repeat(30)), &deep));
        assert!(glob_match(&format!("{}y", "**/".repeat(30)), &deep));
    }

    #[test]
    fn option_like_paths_are_made_paths() {
        assert_eq!(super::not_an_option("-delete"), "./-delete");
        assert_eq!(super::not_an_option("src"), "src");
    }
}
