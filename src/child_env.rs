//! What a child of the master (a worker, a probe or a hook) inherits from
//! the master's environment: [`ChildEnv`].

use std::ffi::{OsStr, OsString};
use std::fmt;

use crate::config::{Fetch, Program, Source};
use crate::protocol::{is_protocol_var, AWS_CREDENTIALS};

/// What a child of the master (a worker or a probe) inherits: the master's
/// environment minus the protocol variables the master sets itself, minus
/// the fetch credentials (the github source's `token_env`; the AWS keys
/// when the s3 source is configured) unless `program.pass_env` names them,
/// with `program.env` on top. The protocol variables for the child are
/// added by whoever starts it.
///
/// Its `Debug` lists names only: values may be secrets.
#[derive(Clone)]
pub struct ChildEnv {
    vars: Vec<(OsString, OsString)>,
    withheld: Vec<String>,
}

impl ChildEnv {
    /// The environment for children of a master running `program` with
    /// `fetch`, from this process's environment. Logs the credentials it
    /// withholds.
    pub fn new(program: &Program, fetch: Option<&Fetch>) -> ChildEnv {
        let env = ChildEnv::from_vars(std::env::vars_os(), program, fetch);
        if !env.withheld.is_empty() {
            tracing::info!(
                "workers and probes do not get the fetch credentials {}; \
                 list them in program.pass_env to pass them on",
                env.withheld.join(", ")
            );
        }
        env
    }

    /// As [`ChildEnv::new`], from the given master environment.
    pub(crate) fn from_vars(
        master: impl IntoIterator<Item = (OsString, OsString)>,
        program: &Program,
        fetch: Option<&Fetch>,
    ) -> ChildEnv {
        let credentials = fetch.map(credentials).unwrap_or_default();
        let is = |name: &OsStr, list: &[String]| list.iter().any(|n| OsStr::new(n) == name);
        let mut withheld = Vec::new();
        let mut vars = Vec::new();
        for (name, value) in master {
            let protocol = name.to_str().is_some_and(is_protocol_var);
            if protocol || program.env.contains_key(&*name.to_string_lossy()) {
                continue;
            }
            if is(&name, &credentials) && !is(&name, &program.pass_env) {
                withheld.push(name.to_string_lossy().into_owned());
                continue;
            }
            vars.push((name, value));
        }
        vars.extend(
            program
                .env
                .iter()
                .filter(|(k, _)| !is_protocol_var(k))
                .map(|(k, v)| (k.into(), v.into())),
        );
        ChildEnv { vars, withheld }
    }

    /// The final list: `(name, value)` in the order a child gets them.
    pub fn vars(&self) -> &[(OsString, OsString)] {
        &self.vars
    }

    /// The credentials present in the master's environment that children
    /// do not get.
    pub fn withheld(&self) -> &[String] {
        &self.withheld
    }
}

impl fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildEnv")
            .field(
                "names",
                &self
                    .vars
                    .iter()
                    .map(|(k, _)| k.to_string_lossy())
                    .collect::<Vec<_>>(),
            )
            .field("withheld", &self.withheld)
            .finish()
    }
}

/// The fetch credentials `fetch` reads from the master's environment.
fn credentials(fetch: &Fetch) -> Vec<String> {
    match &fetch.source {
        Source::Github { token_env, .. } => vec![token_env.clone()],
        Source::S3 { .. } => AWS_CREDENTIALS.iter().map(|&s| s.to_owned()).collect(),
        Source::File { .. } | Source::Http { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    // Some cases need the github or s3 source.
    #![cfg_attr(not(all(feature = "github", feature = "s3")), allow(dead_code))]
    use super::*;
    use crate::config::Config;
    use crate::protocol::PROTOCOL_VARS;
    use std::path::Path;

    fn env(config: &str, master: &[(&str, &str)]) -> Vec<(String, String)> {
        let config = Config::parse(config, Path::new("/srv")).unwrap();
        let master = master.iter().map(|(k, v)| (k.into(), v.into()));
        ChildEnv::from_vars(master, &config.program, config.fetch.as_ref())
            .vars()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    fn names(vars: &[(String, String)]) -> Vec<&str> {
        vars.iter().map(|(k, _)| k.as_str()).collect()
    }

    const PROGRAM: &str =
        "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\"]\n";
    const GITHUB: &str =
        "[releases]\nbinary = \"y\"\n[fetch]\nsource = \"github\"\nrepo = \"a/b\"\nasset = \"x\"\n";
    const S3: &str =
        "[releases]\nbinary = \"y\"\n[fetch]\nsource = \"s3\"\nbucket = \"b\"\nkey = \"k\"\n";
    const AWS: [(&str, &str); 3] = [
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "shh"),
        ("AWS_SESSION_TOKEN", "tok"),
    ];

    #[test]
    #[cfg(feature = "github")]
    fn the_token_is_withheld() {
        let vars = env(
            &format!("{PROGRAM}{GITHUB}"),
            &[("GITHUB_TOKEN", "ghp_x"), ("HOME", "/root")],
        );
        assert_eq!(vars, [("HOME".to_owned(), "/root".to_owned())]);
        let vars = env(
            &format!("{PROGRAM}{GITHUB}token_env = \"DEPLOY_TOKEN\"\n"),
            &[("DEPLOY_TOKEN", "ghp_x"), ("GITHUB_TOKEN", "other")],
        );
        assert_eq!(names(&vars), ["GITHUB_TOKEN"]);
    }

    const PASS: &str = "[program]\npass_env = [\"GITHUB_TOKEN\", \"AWS_ACCESS_KEY_ID\"]\n";

    #[test]
    #[cfg(feature = "github")]
    fn pass_env_lets_the_token_through() {
        let config = PROGRAM.replace("[program]\n", PASS);
        let vars = env(&format!("{config}{GITHUB}"), &[("GITHUB_TOKEN", "ghp_x")]);
        assert_eq!(vars, [("GITHUB_TOKEN".to_owned(), "ghp_x".to_owned())]);
    }

    #[test]
    #[cfg(feature = "s3")]
    fn pass_env_lets_an_aws_key_through() {
        let config = PROGRAM.replace("[program]\n", PASS);
        let vars = env(&format!("{config}{S3}"), &AWS);
        assert_eq!(names(&vars), ["AWS_ACCESS_KEY_ID"]);
    }

    #[test]
    #[cfg(feature = "s3")]
    fn aws_keys_are_withheld_only_with_the_s3_source() {
        assert!(env(&format!("{PROGRAM}{S3}"), &AWS).is_empty());
        assert_eq!(env(PROGRAM, &AWS).len(), 3);
        if cfg!(feature = "github") {
            assert_eq!(env(&format!("{PROGRAM}{GITHUB}"), &AWS).len(), 3);
        }
    }

    #[test]
    fn protocol_variables_are_never_inherited() {
        let master: Vec<(&str, &str)> = PROTOCOL_VARS
            .iter()
            .map(|&v| (v, "1"))
            .chain([("PATH", "/bin")])
            .collect();
        assert_eq!(names(&env(PROGRAM, &master)), ["PATH"]);
    }

    #[test]
    fn program_env_goes_on_top() {
        let config = PROGRAM.replace(
            "[program]\n",
            "[program]\nenv = { PATH = \"/opt/bin\", RUST_LOG = \"info\" }\n",
        );
        let vars = env(&config, &[("PATH", "/bin"), ("HOME", "/root")]);
        assert_eq!(names(&vars), ["HOME", "PATH", "RUST_LOG"]);
        assert_eq!(vars[1].1, "/opt/bin");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let config = Config::parse(PROGRAM, Path::new("/srv")).unwrap();
        let child = ChildEnv::from_vars(
            [("API_KEY".into(), "hunter2".into())],
            &config.program,
            config.fetch.as_ref(),
        );
        let shown = format!("{child:?}");
        assert!(
            shown.contains("API_KEY") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
