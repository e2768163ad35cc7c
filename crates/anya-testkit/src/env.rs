//! Test configuration from the environment, with one rule: a missing server is a skip on a
//! developer's machine and a failure in CI.

/// The value of `var`; `None` (and a `skipped: VAR unset` line on stderr) when it is unset or
/// empty outside CI. In CI (`CI` set) a missing value panics with `how`, which says what should
/// have set it, so a misconfigured CI run fails instead of passing by doing nothing.
#[allow(clippy::print_stderr, reason = "tells the developer why a test did nothing")]
pub fn require_env(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("CI").is_some() => panic!("{var} is unset in CI: {how}"),
        _ => {
            eprintln!("skipped: {var} unset ({how})");
            None
        }
    }
}
