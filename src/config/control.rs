//! `[control]`: the control socket and the metrics address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Error;

/// The operator's interface: `[control]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// The unix control socket `baton status` and friends talk to (mode
    /// 0600). Default: `$RUNTIME_DIRECTORY/baton.sock` when systemd sets
    /// it, else `.baton.sock` beside the config file. `None` (library mode
    /// without a config file): no control socket.
    pub socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics at `/metrics` (`None`: nowhere).
    pub metrics: Option<SocketAddr>,
}

/// `[control]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    socket: Option<String>,
    metrics: Option<String>,
}

impl RawControl {
    /// Checks `[control]`; the socket's path resolves against `base`.
    pub(super) fn parse(self, base: &Path) -> Result<Control, Error> {
        let metrics = match &self.metrics {
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
                Error::invalid(
                    "control.metrics",
                    addr,
                    format!("expected an address such as 127.0.0.1:9464 ({e})"),
                )
            })?),
            None => None,
        };
        let socket = match &self.socket {
            Some(path) if path.trim().is_empty() => {
                return Err(Error::invalid("control.socket", path, "must be a path"))
            }
            Some(path) => base.join(path),
            None => match std::env::var_os("RUNTIME_DIRECTORY") {
                // systemd's RuntimeDirectory= (the first, if several).
                Some(dirs) => std::env::split_paths(&dirs)
                    .next()
                    .unwrap_or_else(|| base.to_owned())
                    .join("baton.sock"),
                None => base.join(".baton.sock"),
            },
        };
        Ok(Control {
            socket: Some(socket),
            metrics,
        })
    }
}
