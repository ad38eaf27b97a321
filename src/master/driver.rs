//! The master's driver: one `select!` loop that turns what happens
//! (signals, worker exits, notify messages, control requests, finished
//! writes, checks, timers) into [`Event`]s for the [`Core`], and carries
//! out the [`Action`]s it returns. It owns every descriptor, channel and
//! task; it decides nothing.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use super::boot::{checker, warn_http_ready, Signals};
use super::control::{self, refuse, Incoming};
use super::core::{restart_needed, Core, Settings};
use super::event::{Action, AfterReload, Disk, Event, Notice, Reloaded, Sig, Token};
use super::notify::{NotifyServer, Supervisor};
use super::reexec::{self, Document, Handover};
use super::store_io::{Finished, StoreIo};
use super::worker::{Exit, Launcher, Worker};
use super::{health, ready, self_update, update, Stopped};
use crate::child_env::ChildEnv;
use crate::config::{Config, Fetch, Hooks, Program, Releases, Verify};
use crate::control::Request;
use crate::fetchers::Fetcher;
use crate::release::{Meta, Pipeline, Store};
use crate::sockets::Sockets;

/// The config as running (a reload replaces it).
pub(super) struct Running {
    pub program: Program,
    pub releases: Option<Releases>,
    pub fetch: Option<Fetch>,
    pub verify: Verify,
    pub hooks: Hooks,
    /// `[self]` as read at start (a change applies at the next start or
    /// re-exec).
    pub self_channel: Option<crate::config::SelfChannel>,
    /// The config file, when there is one to reload.
    pub path: Option<PathBuf>,
}

/// Where a control request's answer goes.
pub(super) enum Responder {
    /// Back through the control server.
    Channel(oneshot::Sender<Value>),
    /// Straight onto the connection (`reexec`, whose answer may come from
    /// the next master).
    Conn(std::os::unix::net::UnixStream),
}

/// The receiving ends the loop waits on.
pub(super) struct Inbox {
    pub signals: Signals,
    pub notify: NotifyServer,
    pub exits: mpsc::UnboundedReceiver<Exit>,
    pub ready: mpsc::UnboundedReceiver<u64>,
    pub installed: mpsc::UnboundedReceiver<update::Installed>,
    pub store: Option<mpsc::UnboundedReceiver<Finished>>,
    pub health: mpsc::UnboundedReceiver<health::Report>,
    pub control: mpsc::UnboundedReceiver<Incoming>,
    pub reports: mpsc::UnboundedReceiver<update::CheckReport>,
    pub reexec: mpsc::UnboundedReceiver<reexec::Checked>,
    /// New builds of baton from `[self]`.
    pub selfs: mpsc::UnboundedReceiver<self_update::Ready>,
}

/// The sending ends tasks are given.
#[derive(Clone)]
pub(super) struct Outbox {
    pub exits: mpsc::UnboundedSender<Exit>,
    pub ready: mpsc::UnboundedSender<u64>,
    pub installed: mpsc::UnboundedSender<update::Installed>,
    pub health: mpsc::UnboundedSender<health::Report>,
    pub reports: mpsc::UnboundedSender<update::CheckReport>,
    pub reexec: mpsc::UnboundedSender<reexec::Checked>,
    pub selfs: mpsc::UnboundedSender<self_update::Ready>,
}

/// The descriptors a re-exec hands over besides the sockets and workers.
pub(super) struct Fds {
    /// The notify socket: descriptor and path.
    pub notify: (RawFd, PathBuf),
    /// The control socket's path and listener.
    pub control: Option<(PathBuf, RawFd)>,
    /// The metrics listener.
    pub metrics: Option<RawFd>,
}

/// Everything the master holds.
pub(super) struct Driver {
    pub core: Core,
    pub config: Running,
    pub sockets: Sockets,
    /// Socket sets a reload replaced, by generation.
    pub retired: Vec<(u64, Sockets)>,
    pub generations: u64,
    pub fds: Fds,
    pub exe: PathBuf,
    pub child_env: ChildEnv,
    pub supervisor: Supervisor,
    pub outbox: Outbox,
    pub workers: BTreeMap<u64, Worker>,
    pub ready_checks: BTreeMap<u64, tokio::task::JoinHandle<()>>,
    pub checker: Option<health::Checker>,
    pub health_task: Option<tokio::task::JoinHandle<()>>,
    pub store: Option<Store>,
    pub store_io: Option<StoreIo>,
    /// The update loop's supervisor task.
    pub updater: Option<tokio::task::JoinHandle<()>>,
    /// Writes trial reports, with `[fetch] report`.
    pub reporter: Option<crate::fleet::Reporter>,
    pub check_now: Arc<tokio::sync::Notify>,
    pub replies: BTreeMap<Token, Responder>,
    /// Holds on the update loop, released when the core says.
    pub holds: BTreeMap<Token, oneshot::Sender<()>>,
    pub next_token: Token,
    /// The metrics task.
    pub metrics_task: Option<tokio::task::JoinHandle<()>>,
    /// baton's own store and loop, with `[self]`.
    pub baton: Option<self_update::Own>,
    /// Held for the master's life: the control server (the socket file
    /// goes with it), the releases directory's lock, the orphan reaper.
    pub _held: (
        Option<control::Server>,
        Option<crate::release::Lock>,
        crate::reaper::Reaper,
    ),
}

/// What one turn of the loop received.
enum Got {
    Event(Box<Event>),
    Exit(Exit),
    Installed(update::Installed),
    Control(Incoming),
    Nothing,
}

/// An event as one turn's catch.
fn got(event: Event) -> Got {
    Got::Event(Box::new(event))
}

impl Driver {
    /// A new token.
    pub(super) fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Runs the loop from `first` until the core says every worker has
    /// exited.
    pub(super) async fn run(mut self, mut inbox: Inbox, first: Event) -> Stopped {
        let mut stopped = self.dispatch(first);
        while stopped.is_none() {
            let timer = self.core.deadline();
            let got = tokio::select! {
                _ = inbox.signals.hup.recv() => got(Event::Signal(Sig::Hup)),
                _ = inbox.signals.usr2.recv() => got(Event::Signal(Sig::Usr2)),
                _ = inbox.signals.usr1.recv() => got(Event::Signal(Sig::Usr1)),
                _ = inbox.signals.term.recv() => got(Event::Signal(Sig::Term)),
                _ = inbox.signals.int.recv() => got(Event::Signal(Sig::Int)),
                Some(exit) = inbox.exits.recv() => Got::Exit(exit),
                Some(id) = inbox.ready.recv() => got(Event::Ready(id)),
                Some(new) = inbox.installed.recv() => Got::Installed(new),
                Some((done, current)) = recv_opt(&mut inbox.store) => {
                    got(Event::Store { done, current })
                }
                Some(report) = inbox.health.recv() => got(Event::Health(report)),
                Some(incoming) = inbox.control.recv() => Got::Control(incoming),
                Some(report) = inbox.reports.recv() => got(Event::Checked(report)),
                Some(checked) = inbox.reexec.recv() => got(Event::ReexecChecked(checked)),
                Some(up) = inbox.selfs.recv() => got(Event::SelfReady(Box::new(up))),
                msg = inbox.notify.recv() => match msg {
                    Ok(msg) => got(Event::Notify(msg)),
                    Err(e) => {
                        tracing::warn!("cannot read the notify socket: {e}");
                        Got::Nothing
                    }
                },
                _ = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => {
                    got(Event::Timer)
                }
            };
            let event = match got {
                Got::Event(event) => *event,
                Got::Exit(Exit::Exited { id, status }) => {
                    self.workers.remove(&id);
                    Event::Exited { id, status }
                }
                Got::Installed(new) => {
                    let hold = self.token();
                    self.holds.insert(hold, new.done);
                    Event::Installed {
                        release: new.release,
                        leaves: new.leaves,
                        hold,
                    }
                }
                Got::Control(incoming) => match self.control_event(incoming) {
                    Some(event) => event,
                    None => continue,
                },
                Got::Nothing => continue,
            };
            stopped = self.dispatch(event);
        }
        if let Some(u) = self.updater.take() {
            u.abort();
        }
        if let Some(io) = self.store_io.take() {
            io.finish();
        }
        if let Some(task) = self.metrics_task.take() {
            task.abort();
        }
        stopped.unwrap_or(Stopped::Graceful)
    }

    /// Hands `event` to the core and carries out what it returns; an
    /// action whose outcome is an event of its own is followed at once,
    /// before the next action, as a direct call would be.
    fn dispatch(&mut self, event: Event) -> Option<Stopped> {
        let actions = self.core.handle(event, Instant::now());
        let mut stopped = None;
        for action in actions {
            if let Some(how) = self.act(action) {
                stopped = Some(how);
            }
        }
        stopped
    }

    fn act(&mut self, action: Action) -> Option<Stopped> {
        match action {
            Action::Spawn {
                id,
                release,
                own_dir,
            } => {
                let event = self.spawn(id, release, own_dir);
                return self.dispatch(event);
            }
            Action::Drain(id) => {
                if let Some(w) = self.workers.get(&id) {
                    w.signal(self.config.program.stop_signal.0);
                }
            }
            Action::Kill(id) => {
                if let Some(w) = self.workers.get(&id) {
                    w.kill();
                }
            }
            Action::Notify(notice) => match notice {
                Notice::Ready(s) => self.supervisor.ready(&s),
                Notice::Reloading(s) => self.supervisor.reloading(&s),
                Notice::Status(s) => self.supervisor.status(&s),
                Notice::Stopping => self.supervisor.stopping(),
            },
            Action::Store(job) => {
                // The core asks only a master with a releases directory.
                if let Some(io) = &self.store_io {
                    io.send(job);
                }
            }
            Action::StartReadyCheck { id, path } => {
                if let Some(addr) = self.sockets.first_tcp() {
                    let task = ready::spawn_http_check(id, addr, path, self.outbox.ready.clone());
                    self.ready_checks.insert(id, task);
                }
            }
            Action::StopReadyCheck(id) => {
                if let Some(task) = self.ready_checks.remove(&id) {
                    task.abort();
                }
            }
            Action::StartHealth {
                worker,
                pid,
                release,
            } => self.start_health(worker, pid, release),
            Action::StopHealth => {
                if let Some(task) = self.health_task.take() {
                    task.abort();
                }
            }
            Action::Reply(to, answer) => self.answer(to, answer),
            Action::CheckNow => self.check_now.notify_one(),
            Action::Release(hold) => {
                self.holds.remove(&hold);
            }
            Action::Reload { why, then, hold } => {
                let event = self.reload(why, then, hold);
                return self.dispatch(event);
            }
            Action::CloseSockets(generation) => {
                self.retired.retain(|(g, _)| *g != generation);
                tracing::debug!("closed a retired socket set");
                if let Err(e) = self.sockets.ensure_reserved() {
                    tracing::warn!("cannot reserve the descriptors workers' sockets land on: {e}");
                }
            }
            Action::CheckReexec(binary) => {
                let done = self.outbox.reexec.clone();
                let config = self.config.path.clone().unwrap_or_default();
                tokio::spawn(async move {
                    let _ = done.send(reexec::check(&binary, &config).await);
                });
            }
            Action::ProbeSelf(version) => {
                let done = self.outbox.reexec.clone();
                let (binary, env) = (self.exe.clone(), self.child_env.vars().to_vec());
                tokio::spawn(async move {
                    let _ = done.send(reexec::probe(&binary, version.as_deref(), env).await);
                });
            }
            Action::Exec {
                binary,
                reply,
                asked,
                carry,
                upgrade,
            } => {
                // The wall-clock time it was asked at, for the next
                // master's report of how long the re-exec took.
                let ago = Instant::now().saturating_duration_since(asked);
                let asked_at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(ago)
                    .as_millis() as u64;
                let error = match self.begin_self_trial(upgrade.as_deref()) {
                    Ok(()) => self.exec(&binary, reply, asked_at_ms, *carry),
                    Err(e) => e,
                };
                if let (Some(up), Some(s)) = (&upgrade, &self.baton) {
                    self_update::exec_failed(s.store.dir(), up, &error);
                }
                return self.dispatch(Event::ExecFailed { error, reply });
            }
            Action::PostHook {
                which,
                release,
                before,
            } => {
                if let Some(store) = &self.store {
                    self.hook_runner()
                        .spawn_post(which, release, before, store.clone());
                }
            }
            Action::Report(note) => {
                if let Some(reporter) = &self.reporter {
                    reporter.send(note);
                }
            }
            Action::Exit(how) => return Some(how),
        }
        None
    }

    /// Starts worker `id`.
    fn spawn(&mut self, id: u64, release: Option<Meta>, own_dir: bool) -> Event {
        let program = &self.config.program;
        let command = match (&release, &self.store) {
            (Some(r), Some(store)) if own_dir => store
                .command_for(&program.command, &r.id)
                .unwrap_or_else(|| program.command.clone()),
            _ => program.command.clone(),
        };
        let extra: Vec<(String, String)> = release
            .iter()
            .flat_map(|r| {
                [
                    (crate::protocol::BATON_RELEASE.to_owned(), r.id.clone()),
                    (crate::protocol::BATON_SHA256.to_owned(), r.sha256.clone()),
                ]
            })
            .collect();
        if let Err(e) = self.sockets.ensure_reserved() {
            tracing::warn!("cannot reserve the descriptors workers' sockets land on: {e}");
        }
        let launcher = Launcher {
            program: &self.config.program,
            env: &self.child_env,
            sockets: &self.sockets,
            notify_socket: &self.fds.notify.1,
            exits: &self.outbox.exits,
        };
        match Worker::spawn(id, &command, &extra, &launcher) {
            Ok(worker) => {
                let event = Event::Spawned {
                    id,
                    pid: worker.pid,
                    tail: worker.tail().clone(),
                };
                self.workers.insert(id, worker);
                event
            }
            Err(e) => Event::SpawnFailed {
                id,
                error: e.to_string(),
            },
        }
    }

    fn start_health(&mut self, worker: u64, pid: u32, release: Option<String>) {
        let Some(checker) = &self.checker else { return };
        if let Some(task) = self.health_task.take() {
            task.abort();
        }
        let release = release.map(|r| {
            let version = self
                .store
                .as_ref()
                .and_then(|s| s.release(&r))
                .and_then(|m| m.version);
            (r, version)
        });
        let target = health::Target {
            worker,
            pid,
            release,
        };
        let task = health::spawn(checker.clone(), target, self.outbox.health.clone());
        self.health_task = Some(task);
    }

    /// A control request as an event, with what it reads from the
    /// releases directory; `None` when it was answered here.
    fn control_event(&mut self, incoming: Incoming) -> Option<Event> {
        let Incoming {
            request,
            reply,
            conn,
        } = incoming;
        let responder = match (&request, conn) {
            (Request::Reexec { .. }, Some(conn)) => Responder::Conn(conn),
            (Request::Reexec { .. }, None) => {
                let _ = reply.send(refuse("reexec needs its own control connection"));
                return None;
            }
            _ => Responder::Channel(reply),
        };
        let token = self.token();
        self.replies.insert(token, responder);
        let disk = self.disk(&request);
        Some(Event::Control {
            request,
            reply: token,
            disk,
        })
    }

    /// What `request` shows of the releases directory.
    fn disk(&self, request: &Request) -> Disk {
        let baton = match request {
            Request::Status => Box::new(self_update::status(self.baton.as_ref())),
            _ => Default::default(),
        };
        let Some(store) = &self.store else {
            return Disk {
                baton,
                ..Disk::default()
            };
        };
        let sorted = |set: std::collections::HashSet<String>| {
            let mut v: Vec<String> = set.into_iter().collect();
            v.sort();
            v
        };
        match request {
            Request::Status | Request::Releases => Disk {
                current: store.current(),
                previous: store.previous(),
                releases: match request {
                    Request::Releases => store.releases(),
                    _ => Vec::new(),
                },
                failed: sorted(store.failed()),
                held: sorted(store.held()),
                quarantined: sorted(store.quarantined()),
                yanked: sorted(store.yanked()),
                host_id: self.config.fetch.as_ref().and_then(|f| {
                    crate::release::cohort::host_id(store, f.host_id.as_deref()).ok()
                }),
                reports: self.reporter.as_ref().map(|r| {
                    use std::sync::atomic::Ordering::Relaxed;
                    let c = r.counters();
                    crate::control::reply::Reports {
                        written: c.written.load(Relaxed),
                        failed_writes: c.failed.load(Relaxed),
                        pending: c.pending.load(Relaxed),
                    }
                }),
                baton,
            },
            Request::Rollback => Disk {
                current: store.current(),
                previous: store.previous(),
                yanked: sorted(store.yanked()),
                ..Disk::default()
            },
            _ => Disk::default(),
        }
    }

    fn answer(&mut self, to: Token, answer: Value) {
        match self.replies.remove(&to) {
            Some(Responder::Channel(tx)) => {
                let _ = tx.send(answer);
            }
            Some(Responder::Conn(conn)) => control::answer(conn, &answer),
            None => {}
        }
    }

    /// The hooks as configured now, with the workers' environment.
    pub(super) fn hook_runner(&self) -> crate::hooks::Hooks {
        crate::hooks::Hooks {
            config: self.config.hooks.clone(),
            env: self.child_env.vars().to_vec(),
            workdir: self.config.program.workdir.clone(),
        }
    }

    /// Starts the update loop with the running `[fetch]` and `[verify]`.
    pub(super) fn start_updater(
        &mut self,
        fetcher: Box<dyn Fetcher>,
        gate: Option<oneshot::Receiver<()>>,
    ) {
        let (Some(store), Some(fetch)) = (&self.store, &self.config.fetch) else {
            return;
        };
        let pipeline = Arc::new(
            Pipeline::new(
                store.clone(),
                self.config.verify.clone(),
                self.child_env.clone(),
            )
            .with_reports(crate::fleet::Sink::at(fetch)),
        );
        let with = update::Loop {
            fetch: fetch.clone(),
            verify: self.config.verify.clone(),
            pipeline,
            installed: self.outbox.installed.clone(),
            check_now: self.check_now.clone(),
            reports: self.outbox.reports.clone(),
            hooks: Arc::new(self.hook_runner()),
        };
        self.updater = Some(tokio::spawn(update::supervise(with, fetcher, gate)));
    }

    /// Reads, checks and applies the config file.
    fn reload(&mut self, why: String, then: AfterReload, hold: Option<Token>) -> Event {
        let path = self
            .config
            .path
            .clone()
            .expect("the core reloads only a master with a config file");
        self.supervisor
            .reloading(&format!("{why}: reloading {}", path.display()));
        let result = match self.apply(&path, hold) {
            Ok((summary, retired)) => Ok(Reloaded {
                summary: format!("{why}: reloaded {}: {summary}", path.display()),
                settings: Settings::new(&self.config.program, self.config.releases.as_ref()),
                updater: self.updater.is_some(),
                retired,
            }),
            Err(e) => Err(format!(
                "{why}: reload of {} refused, the running config stays: {e}",
                path.display()
            )),
        };
        Event::Reloaded { why, then, result }
    }

    /// Applies the config at `path` when it is valid, binding new
    /// addresses first: everything that can fail happens before anything
    /// is applied. The summary, and the generation of a retired socket set.
    fn apply(
        &mut self,
        path: &std::path::Path,
        hold: Option<Token>,
    ) -> Result<(String, Option<u64>), String> {
        let new = Config::load(path).map_err(|e| crate::errors::display_chain(&e))?;
        restart_needed(
            self.config.releases.as_ref(),
            self.store.is_some(),
            &self.config.program.command,
            &new,
        )?;
        let fetcher = match (&self.store, &new.fetch) {
            (Some(_), Some(fetch)) => Some(
                crate::fetchers::from_config(fetch, &new.verify).map_err(|e| {
                    format!(
                        "cannot set up the fetcher: {}",
                        crate::errors::display_chain(&e)
                    )
                })?,
            ),
            _ => None,
        };
        let sockets = if self.sockets.adopted() {
            if new.program.listen != self.config.program.listen {
                tracing::warn!(
                    "program.listen changed, but the sockets came from systemd and stay as they are"
                );
            }
            None
        } else {
            Some(
                self.sockets
                    .reconcile(&new.program.listen)
                    .map_err(|e| crate::errors::display_chain(&super::Error::from(e)))?,
            )
        };
        let mut summary = Vec::new();
        let mut retired = None;
        if let Some((sockets, changes)) = sockets {
            for added in &changes.added {
                tracing::info!("listening on {added} (added by the reload)");
            }
            for removed in &changes.removed {
                tracing::info!(
                    "{removed} is no longer configured; closed once the workers holding it have exited"
                );
            }
            summary.push(format!(
                "{} address(es) added, {} removed",
                changes.added.len(),
                changes.removed.len()
            ));
            let old = std::mem::replace(&mut self.sockets, sockets);
            self.generations += 1;
            self.retired.push((self.generations, old));
            retired = Some(self.generations);
        }
        // `[control]` is bound at start: a change needs a restart. `[self]`
        // (its key above all) is read at start and at each re-exec.
        let Config {
            program,
            releases,
            fetch,
            verify,
            hooks,
            self_channel,
            ..
        } = new;
        if format!("{self_channel:?}") != format!("{:?}", self.config.self_channel) {
            tracing::warn!(
                "[self] changed: it applies at the next start or re-exec (`baton reexec`); \
                 the running master keeps checking baton's channel as it was"
            );
            summary.push("[self] changes apply at the next start or re-exec".to_owned());
        }
        warn_http_ready(&program);
        self.child_env = ChildEnv::new(&program, fetch.as_ref());
        self.checker = checker(releases.as_ref(), &self.sockets, &self.child_env, &program);
        // The reports' place follows the source: any change of it, of
        // `report` or of the host id makes a new writer, which takes over
        // once the old one has ended (with the reports it left waiting).
        let place = |f: &Fetch| (f.report, f.host_id.clone(), format!("{:?}", f.source));
        if fetch.as_ref().map(place) != self.config.fetch.as_ref().map(place) {
            let old = self.reporter.take();
            self.reporter = reporter(fetch.as_ref(), self.store.as_ref(), old);
        }
        self.config.program = program;
        self.config.releases = releases;
        self.config.fetch = fetch;
        self.config.verify = verify;
        self.config.hooks = hooks;
        if let Some(updater) = self.updater.take() {
            updater.abort();
            summary.push("the update loop was rebuilt".to_owned());
        }
        if let Some(fetcher) = fetcher {
            // A trial under way holds the new loop back until it ends.
            let gate = hold.and_then(|hold| {
                let done = self.holds.get_mut(&hold)?;
                let (tx, rx) = oneshot::channel();
                *done = tx;
                Some(rx)
            });
            self.start_updater(fetcher, gate);
        }
        summary.push("program settings apply to the workers started from now on".to_owned());
        Ok((summary.join("; "), retired))
    }

    /// Writes the self-upgrade record before the `execve` into a new build
    /// of baton.
    fn begin_self_trial(&self, upgrade: Option<&self_update::Ready>) -> Result<(), String> {
        let (Some(up), Some(s)) = (upgrade, &self.baton) else {
            return Ok(());
        };
        self_update::begin(s.store.dir(), up, &self.exe, s.settle).map_err(|e| {
            format!(
                "self-upgrade to baton {} refused: cannot write its record: {e}",
                up.version
            )
        })?;
        // The bound on reaching the serving loop: settle, and never less
        // than a busy machine needs to start a master.
        let within = s.settle.max(std::time::Duration::from_secs(15));
        self_update::start_watchdog(&self.exe, s.store.dir(), within);
        Ok(())
    }

    /// Executes the new binary with the core's `carry`; returns only when
    /// that failed, with why.
    fn exec(
        &mut self,
        binary: &std::path::Path,
        reply: Option<Token>,
        asked_at_ms: u64,
        carry: super::core::Carry,
    ) -> String {
        let conn = reply.and_then(|to| match self.replies.get(&to) {
            Some(Responder::Conn(conn)) => Some(conn.as_raw_fd()),
            _ => None,
        });
        let handover = Handover {
            sockets: self.sockets.carry(),
            notify: self.fds.notify.clone(),
            control: self.fds.control.clone().map(|(p, fd)| (fd, p)),
            metrics: self.fds.metrics,
            stderr: self
                .workers
                .iter()
                .filter_map(|(id, w)| Some((*id, w.stderr_fd()?)))
                .collect(),
        };
        let doc = Document::new(carry, handover, binary, asked_at_ms, conn);
        let supervisor = &self.supervisor;
        reexec::exec(binary, &doc, conn, || {
            supervisor.reloading(&format!("re-executing {}", binary.display()))
        })
    }
}

/// The trial reports' writer `fetch` asks for; none when it cannot know
/// this host's id (said in the log: the trials go on without reports).
pub(super) fn reporter(
    fetch: Option<&Fetch>,
    store: Option<&Store>,
    previous: Option<crate::fleet::Reporter>,
) -> Option<crate::fleet::Reporter> {
    let (fetch, store) = (fetch?, store?);
    let sink = crate::fleet::Sink::of(fetch)?;
    match crate::release::cohort::host_id(store, fetch.host_id.as_deref()) {
        Ok(host_id) => {
            tracing::info!(
                "trial reports of host {host_id} go to {}",
                sink.describe("reports/")
            );
            Some(crate::fleet::Reporter::start_after(
                previous,
                sink,
                host_id,
                store.dir(),
                fetch.interval,
            ))
        }
        Err(e) => {
            tracing::error!(
                "cannot read this host's id, so no trial report is written: {}",
                crate::errors::display_chain(&e)
            );
            None
        }
    }
}

/// Receives from an optional channel; pending for ever without one.
async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
