//! How an error is shown on one line. A leaf.

/// An error and its sources on one line: `a: b: c`.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
