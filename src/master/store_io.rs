//! The master's writes to the releases directory (trial records, promotion,
//! quarantine) run on a thread of their own, in the order they were asked
//! for, so that renames and fsyncs never stall the event loop. Each result
//! comes back to the loop as a message.

use tokio::sync::mpsc;

use crate::release::{Error, Meta, Store, TrialContext};

/// A write to the releases directory.
#[derive(Debug)]
pub(crate) enum Job {
    /// Record durably that a release is on trial: which attempt, from
    /// what, leaving which yanked version.
    BeginTrial(Meta, TrialContext),
    /// Swap `current` to the release, then clear the trial record.
    Promote(Meta),
    /// Record the release's digest as failed, then clear the trial record.
    Fail(Meta),
    /// Clear the trial record without a verdict (a graceful stop: the
    /// release is tried again at the next start).
    Abandon(Meta),
    /// A rollback's worker serves: swap `current` to `to` and hold the
    /// digest rolled back from.
    RollBack {
        /// The release rolled back to (`previous`).
        to: Meta,
        /// The digest rolled back from.
        hold: Option<String>,
    },
    /// Forget the held digests (`baton upgrade --force`).
    ClearHeld,
}

/// What became of a job.
#[derive(Debug)]
pub(crate) enum Done {
    /// The trial record is on disk; its worker may start.
    TrialBegun(Meta, Result<(), Error>),
    /// `current` names the release; the id it named before.
    Promoted(Meta, Result<Option<String>, Error>),
    /// The digest is recorded as failed.
    Failed(Meta, Result<(), Error>),
    /// The trial record is gone.
    Abandoned(Meta, Result<(), Error>),
    /// `current` names the release rolled back to; the id it named before.
    RolledBack(Meta, Result<Option<String>, Error>),
    /// No digest is held any more.
    HeldCleared(Result<(), Error>),
}

/// A job's outcome, with what `current` names after it.
pub(crate) type Finished = (Done, Option<Meta>);

/// The thread that runs the jobs.
pub(crate) struct StoreIo {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreIo {
    /// Starts the thread; results arrive on the returned receiver, each with
    /// what `current` names after the write.
    pub(crate) fn start(
        store: Store,
    ) -> std::io::Result<(StoreIo, mpsc::UnboundedReceiver<Finished>)> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("baton-store".to_owned())
            .spawn(move || {
                for job in queue {
                    // With what `current` names after it.
                    let done = run(&store, job);
                    let _ = done_tx.send((done, store.current()));
                }
            })?;
        Ok((
            StoreIo {
                jobs: Some(jobs),
                thread: Some(thread),
            },
            done,
        ))
    }

    /// Queues a job.
    pub(crate) fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Runs the queued jobs to their end and stops the thread.
    pub(crate) fn finish(mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &Store, job: Job) -> Done {
    match job {
        Job::BeginTrial(meta, context) => {
            let r = store.begin_trial(&meta, &context);
            Done::TrialBegun(meta, r)
        }
        Job::Promote(meta) => {
            let r = store
                .promote(&meta.id)
                .and_then(|before| store.end_trial().map(|()| before));
            Done::Promoted(meta, r)
        }
        Job::Fail(meta) => {
            let r = store
                .mark_failed(&meta.sha256)
                .and_then(|()| store.end_trial());
            Done::Failed(meta, r)
        }
        Job::RollBack { to, hold } => {
            let r = hold
                .map_or(Ok(()), |sha| store.hold(&sha))
                .and_then(|()| store.promote(&to.id));
            Done::RolledBack(to, r)
        }
        Job::ClearHeld => Done::HeldCleared(store.clear_held()),
        Job::Abandon(meta) => {
            let r = store.end_trial();
            Done::Abandoned(meta, r)
        }
    }
}
