//! The fleet watching itself, through the store it already reads: each
//! host writes a small report per trial event beside the manifest
//! (`reports/<version>/<outcome>/<host_id>.json`, with `[fetch] report =
//! true` on the `file` and `s3` sources), so whoever publishes, and later
//! the other hosts, see how a release fares. Where the store is read-only,
//! [`prometheus`] reads the same trials from the fleet's metrics.

mod beneath;
pub mod prometheus;
pub mod read;
pub mod report;
pub mod status;

pub use report::{Note, Outcome, Report, Reporter, Sink, Stage};
