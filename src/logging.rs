//! The master's log: human-readable lines, or one JSON object per line for
//! log shippers (`--log-format json` or `BATON_LOG_FORMAT=json`).
//!
//! JSON lines carry `timestamp`, `level`, `target` and `message`, and the
//! event's fields as top-level keys. The field names are stable:
//!
//! | key | what |
//! |---|---|
//! | `event` | what happened, a short snake_case name (`worker_ready`, `cycle_started`, `release_promoted`, `trial_failed`, …) |
//! | `worker` | the worker's id (`BATON_WORKER_ID`) |
//! | `pid` | a process id |
//! | `release` | a release's id (its directory under the releases dir) |
//! | `version` | a release's version |
//! | `error` | why something failed, with its causes |
//!
//! The level comes from `BATON_LOG` (an `EnvFilter` directive, default
//! `info`).

use std::str::FromStr;

/// The variable that picks the log format when `--log-format` is not given.
pub const LOG_FORMAT_VAR: &str = "BATON_LOG_FORMAT";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the event's fields as top-level keys.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

impl LogFormat {
    /// The format `BATON_LOG_FORMAT` asks for; `text` when unset.
    pub fn from_env() -> Result<LogFormat, String> {
        match std::env::var(LOG_FORMAT_VAR) {
            Ok(v) if v.trim().is_empty() => Ok(LogFormat::Text),
            Ok(v) => v.parse().map_err(|e| format!("{LOG_FORMAT_VAR}: {e}")),
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{LOG_FORMAT_VAR} is not valid UTF-8"))
            }
        }
    }
}

/// Sends this process's log to stderr in `format`, at the level `BATON_LOG`
/// sets (default `info`). Does nothing when a subscriber is already set.
pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(text_fields())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// Fields of a text line: the message, then `name=value` pairs, without
/// `error`, which every message that has one already says in full (a
/// worker's failure with its stderr lines would be written twice).
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    // The message comes first; each other field writes its own separator.
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        "error" => Ok(()),
        name => write!(w, " {name}={value:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("text or json"), "{e}");
    }

    #[test]
    fn json_lines_have_flat_stable_keys() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(event = "worker_ready", worker = 3, "worker is ready");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["event"], "worker_ready");
        assert_eq!(line["worker"], 3);
        assert_eq!(line["message"], "worker is ready");
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].is_string(), "{line}");
    }
}
