//! The master's decisions, fed events under a fake clock: no processes, no
//! sockets, no sleeps, no log text. Each test reads as a script of events
//! and the actions they produce.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::*;
use crate::control::Request;
use crate::release::TrialRecord;

const SETTLE: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

fn settings() -> Settings {
    Settings {
        ready: Ready::Notify,
        ready_timeout: READY_TIMEOUT,
        drain_timeout: DRAIN_TIMEOUT,
        stop_signal: "SIGTERM".to_owned(),
        restart_backoff_max: Duration::from_secs(30),
        settle: SETTLE,
        health: None,
    }
}

fn meta(id: &str) -> Meta {
    Meta {
        id: id.to_owned(),
        version: Some(id.to_owned()),
        sha256: format!("{:0>64}", id.len()),
        size: 1,
        source: "test".to_owned(),
        installed_at: 0,
        binary_sha256: None,
        patch: None,
    }
}

fn exit_code(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

/// A core under a fake clock, with a fake driver: workers get PID
/// `1000 + id`, and every spawn succeeds unless told otherwise.
struct Sim {
    core: Core,
    now: Instant,
    /// Spawns fail while set.
    spawn_fails: bool,
    /// Every action so far, in order.
    log: Vec<Action>,
}

impl Sim {
    fn new(settings: Settings, has_store: bool) -> Sim {
        Sim::with(settings, has_store, false)
    }

    fn with(settings: Settings, has_store: bool, reloadable: bool) -> Sim {
        let now = Instant::now();
        let fixed = Fixed {
            reloadable,
            self_upgrade: false,
            has_store,
            exe: PathBuf::from("/usr/bin/baton"),
            pid: 1,
        };
        Sim {
            core: Core::new(settings, fixed, now),
            now,
            spawn_fails: false,
            log: Vec::new(),
        }
    }

    /// Feeds `event`, then answers each spawn the way a driver does (at
    /// once, before the next action); returns what was done.
    fn on(&mut self, event: Event) -> Vec<Action> {
        let mut done = Vec::new();
        let mut queue = vec![event];
        while let Some(event) = queue.pop() {
            let actions = self.core.handle(event, self.now);
            let mut follow = Vec::new();
            for action in &actions {
                if let Action::Spawn { id, .. } = action {
                    follow.push(if self.spawn_fails {
                        Event::SpawnFailed {
                            id: *id,
                            error: "no such file".to_owned(),
                        }
                    } else {
                        Event::Spawned {
                            id: *id,
                            pid: 1000 + *id as u32,
                            tail: Tail::from_lines(vec![format!("worker {id} says hi")]),
                        }
                    });
                }
            }
            done.extend(actions);
            queue.extend(follow.into_iter().rev());
        }
        self.log.extend(done.iter().map(clone_action));
        done
    }

    fn boot(&mut self, boot: Boot) -> Vec<Action> {
        self.on(Event::Boot(Box::new(boot)))
    }

    /// Boots with `current` and waits for worker 1 to be ready.
    fn serving(&mut self, current: Option<Meta>) {
        let actions = self.boot(Boot {
            current,
            ..Boot::default()
        });
        assert_eq!(spawned(&actions), vec![1]);
        self.ready(1);
    }

    fn ready(&mut self, id: u64) -> Vec<Action> {
        self.on(Event::Notify(notify::Message {
            pid: Some(1000 + id as u32),
            fields: vec![("READY".to_owned(), "1".to_owned())],
        }))
    }

    fn exit(&mut self, id: u64, status: ExitStatus) -> Vec<Action> {
        self.on(Event::Exited { id, status })
    }

    fn signal(&mut self, sig: Sig) -> Vec<Action> {
        self.on(Event::Signal(sig))
    }

    /// Moves the clock by `by` and fires the timer if it is due.
    fn after(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        match self.core.deadline() {
            Some(due) if due <= self.now => self.on(Event::Timer),
            _ => Vec::new(),
        }
    }

    /// Moves the clock to the core's next deadline and fires it.
    fn until_deadline(&mut self) -> Vec<Action> {
        let due = self.core.deadline().expect("a deadline");
        self.now = self.now.max(due);
        self.on(Event::Timer)
    }

    fn store_done(&mut self, done: Done, current: Option<Meta>) -> Vec<Action> {
        self.on(Event::Store { done, current })
    }

    fn control(&mut self, request: Request, token: Token, disk: Disk) -> Vec<Action> {
        self.on(Event::Control {
            request,
            reply: token,
            disk,
        })
    }

    fn status(&mut self) -> reply::Status {
        let actions = self.control(Request::Status, 999, Disk::default());
        let answer = replies(&actions)
            .into_iter()
            .find(|(t, _)| *t == 999)
            .expect("a status reply")
            .1;
        serde_json::from_value(answer).expect("a status")
    }

    fn workers(&mut self) -> Vec<(u64, String)> {
        self.status()
            .workers
            .into_iter()
            .map(|w| (w.id, w.state))
            .collect()
    }
}

/// Actions hold no clones of channels: a debug copy is enough for the log.
fn clone_action(a: &Action) -> Action {
    match a {
        Action::Drain(id) => Action::Drain(*id),
        Action::Kill(id) => Action::Kill(*id),
        Action::Spawn {
            id,
            release,
            own_dir,
        } => Action::Spawn {
            id: *id,
            release: release.clone(),
            own_dir: *own_dir,
        },
        Action::Exit(how) => Action::Exit(*how),
        Action::Notify(n) => Action::Notify(n.clone()),
        _ => Action::CheckNow,
    }
}

/// The worker ids of the actions `pick` takes.
fn ids(actions: &[Action], pick: fn(&Action) -> Option<u64>) -> Vec<u64> {
    actions.iter().filter_map(pick).collect()
}

fn spawned(actions: &[Action]) -> Vec<u64> {
    ids(actions, |a| match a {
        Action::Spawn { id, .. } => Some(*id),
        _ => None,
    })
}

fn drained(actions: &[Action]) -> Vec<u64> {
    ids(actions, |a| match a {
        Action::Drain(id) => Some(*id),
        _ => None,
    })
}

fn killed(actions: &[Action]) -> Vec<u64> {
    ids(actions, |a| match a {
        Action::Kill(id) => Some(*id),
        _ => None,
    })
}

fn jobs(actions: &[Action]) -> Vec<&Job> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(job) => Some(job),
            _ => None,
        })
        .collect()
}

fn replies(actions: &[Action]) -> Vec<(Token, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(t, v) => Some((*t, v.clone())),
            _ => None,
        })
        .collect()
}

fn exit_of(actions: &[Action]) -> Option<Stopped> {
    actions.iter().find_map(|a| match a {
        Action::Exit(how) => Some(*how),
        _ => None,
    })
}

/// Puts `release` on trial the way the update loop and the store thread
/// do; returns the trial worker's id.
fn begin_trial(sim: &mut Sim, release: &Meta, current: Option<Meta>) -> u64 {
    begin_trial_leaving(sim, release, current, None)
}

/// As [`begin_trial`], for a release that takes the host away from the
/// yanked version `leaves`.
fn begin_trial_leaving(
    sim: &mut Sim,
    release: &Meta,
    current: Option<Meta>,
    leaves: Option<&str>,
) -> u64 {
    let actions = sim.on(Event::Installed {
        release: release.clone(),
        leaves: leaves.map(str::to_owned),
        hold: 7,
    });
    match jobs(&actions)[..] {
        [Job::BeginTrial(m, c)] => {
            assert_eq!((m.id.as_str(), c.attempt), (release.id.as_str(), 1));
            assert_eq!(
                c.leaves.as_deref(),
                leaves,
                "the record names the yanked version"
            );
        }
        _ => panic!("no trial recorded: {actions:?}"),
    }
    let actions = sim.store_done(Done::TrialBegun(release.clone(), Ok(())), current);
    let ids = spawned(&actions);
    assert_eq!(ids.len(), 1, "{actions:?}");
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: true, .. } if r.id == release.id)
        ),
        "the trial runs from its own directory: {actions:?}"
    );
    ids[0]
}

#[test]
fn a_cycle_starts_the_new_worker_then_drains_the_old() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    let actions = sim.signal(Sig::Hup);
    assert_eq!(spawned(&actions), vec![2]);
    assert!(drained(&actions).is_empty(), "the old worker serves on");
    assert_eq!(
        sim.workers(),
        vec![(1, "ready".into()), (2, "starting".into())]
    );
    let actions = sim.ready(2);
    assert_eq!(drained(&actions), vec![1]);
    assert_eq!(
        sim.workers(),
        vec![(1, "draining".into()), (2, "ready".into())]
    );
    let actions = sim.exit(1, exit_code(0));
    assert!(
        spawned(&actions).is_empty(),
        "a drained worker is not restarted"
    );
    assert_eq!(sim.status().counters.cycles, 1);
    assert_eq!(sim.core.deadline(), None);
}

#[test]
fn cycles_asked_for_during_a_cycle_coalesce_into_one() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    assert_eq!(spawned(&sim.signal(Sig::Hup)), vec![2]);
    for sig in [Sig::Hup, Sig::Usr2, Sig::Hup] {
        assert!(spawned(&sim.signal(sig)).is_empty());
    }
    let actions = sim.ready(2);
    assert_eq!(drained(&actions), vec![1]);
    assert_eq!(spawned(&actions), vec![3], "one more cycle follows");
    let actions = sim.ready(3);
    assert_eq!(drained(&actions), vec![2]);
    assert!(spawned(&actions).is_empty(), "and only one");
    assert_eq!(sim.status().counters.cycles, 2);
}

#[test]
fn a_crashed_worker_restarts_with_doubling_back_off() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    let mut waits = Vec::new();
    let mut id = 1;
    for _ in 0..4 {
        let actions = sim.exit(id, exit_code(1));
        assert!(spawned(&actions).is_empty(), "not at once");
        let due = sim.core.deadline().expect("a restart is scheduled");
        waits.push(due - sim.now);
        let actions = sim.until_deadline();
        id = spawned(&actions)[0];
        sim.ready(id);
    }
    assert_eq!(
        waits,
        [100, 200, 400, 800].map(Duration::from_millis).to_vec()
    );
    // One that served long enough starts the back-off over.
    sim.after(RESTART_BACKOFF_RESET);
    sim.exit(id, exit_code(1));
    assert_eq!(
        sim.core.deadline().unwrap() - sim.now,
        Duration::from_millis(100)
    );
    let status = sim.status();
    assert_eq!(status.counters.crash_restarts, 5);
    let failure = status.last_failure.unwrap();
    assert!(failure.contains("worker 5 (pid 1005) died"), "{failure}");
    assert!(
        failure.contains("worker 5 says hi"),
        "the stderr tail: {failure}"
    );
}

#[test]
fn the_back_off_is_capped() {
    let mut s = settings();
    s.restart_backoff_max = Duration::from_secs(1);
    let mut sim = Sim::new(s, false);
    sim.serving(None);
    let mut id = 1;
    for _ in 0..8 {
        sim.exit(id, exit_code(1));
        assert!(sim.core.deadline().unwrap() - sim.now <= Duration::from_secs(1));
        id = spawned(&sim.until_deadline())[0];
        sim.ready(id);
    }
}

#[test]
fn a_worker_that_never_becomes_ready_is_killed_and_the_old_one_serves_on() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.signal(Sig::Hup);
    assert!(sim
        .after(READY_TIMEOUT - Duration::from_millis(1))
        .is_empty());
    let actions = sim.after(Duration::from_millis(1));
    assert_eq!(killed(&actions), vec![2]);
    assert!(
        drained(&actions).is_empty(),
        "the old worker is not touched"
    );
    assert!(spawned(&actions).is_empty(), "no restart: worker 1 serves");
    let failure = sim.status().last_failure.unwrap();
    assert!(failure.contains("was not ready within 30s"), "{failure}");
    assert!(
        failure.contains("worker 2 says hi"),
        "the stderr tail: {failure}"
    );
    sim.exit(2, ExitStatus::from_raw(9));
    assert_eq!(sim.workers(), vec![(1, "ready".into())]);
}

#[test]
fn a_first_worker_that_never_becomes_ready_is_restarted() {
    let mut sim = Sim::new(settings(), false);
    sim.boot(Boot::default());
    let actions = sim.after(READY_TIMEOUT);
    assert_eq!(killed(&actions), vec![1]);
    sim.exit(1, ExitStatus::from_raw(9));
    let actions = sim.until_deadline();
    assert_eq!(spawned(&actions), vec![2]);
}

#[test]
fn a_worker_that_cannot_be_spawned_fails_the_cycle_and_the_old_serves_on() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.spawn_fails = true;
    let actions = sim.signal(Sig::Hup);
    assert_eq!(spawned(&actions), vec![2]);
    assert!(sim
        .status()
        .last_failure
        .unwrap()
        .contains("worker 2 failed to start: no such file"));
    assert_eq!(sim.workers(), vec![(1, "ready".into())]);
    assert_eq!(sim.core.deadline(), None, "no restart is due");
}

#[test]
fn a_trial_is_promoted_after_settle_and_a_crash_inside_settle_fails_it() {
    // Promoted.
    let current = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let new = meta("2.0.0");
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    assert_eq!(sim.workers()[1], (id, "on trial".into()));
    let actions = sim.after(SETTLE - Duration::from_millis(1));
    assert!(jobs(&actions).is_empty(), "not before settle");
    let actions = sim.after(Duration::from_millis(1));
    assert!(matches!(jobs(&actions)[..], [Job::Promote(m)] if m.id == new.id));
    let actions = sim.store_done(
        Done::Promoted(new.clone(), Ok(Some(current.id.clone()))),
        Some(new.clone()),
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Release(7))));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::PostHook { release, .. } if release.id == new.id)));
    assert_eq!(sim.status().counters.promotions, 1);

    // Failed inside settle: back to current, which never moved.
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    sim.exit(1, exit_code(0));
    sim.after(SETTLE / 2);
    let actions = sim.exit(id, exit_code(3));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(m)] if m.id == new.id));
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: false, .. } if r.id == current.id)
        ),
        "current starts at once: {actions:?}"
    );
    let status = sim.status();
    assert_eq!(status.counters.failed_trials, 1);
    assert!(status.on_trial.is_none());
}

#[test]
fn a_crash_after_promotion_is_an_ordinary_restart() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    sim.exit(1, exit_code(0));
    sim.after(SETTLE);
    sim.store_done(Done::Promoted(new.clone(), Ok(Some(current.id))), Some(new));
    let actions = sim.exit(id, exit_code(1));
    assert!(jobs(&actions).is_empty(), "no verdict after promotion");
    assert!(spawned(&actions).is_empty(), "a back-off first");
    assert_eq!(sim.core.deadline().unwrap() - sim.now, RESTART_BACKOFF_MIN);
    assert_eq!(sim.status().counters.failed_trials, 0);
}

#[test]
fn a_trial_worker_that_dies_while_the_old_one_drains_fails_the_trial() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    let actions = sim.ready(id);
    assert_eq!(drained(&actions), vec![1]);
    // Worker 1 still drains: nothing to go back to serves.
    let actions = sim.exit(id, exit_code(2));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(_)]));
    assert_eq!(spawned(&actions).len(), 1, "current starts at once");
}

#[test]
fn a_health_check_failing_in_a_row_fails_the_trial() {
    let mut s = settings();
    s.health = Some(HealthPolicy {
        failures: 2,
        after: false,
    });
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(s, true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    let actions = sim.ready(id);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StartHealth { .. })),
        "checked only once it serves alone"
    );
    let actions = sim.exit(1, exit_code(0));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::StartHealth { worker, .. } if *worker == id)));
    // Settle alone does not promote: the last check must have passed.
    assert!(jobs(&sim.after(SETTLE)).is_empty());
    let actions = sim.on(Event::Health((id, Err("503".to_owned()))));
    assert!(jobs(&actions).is_empty(), "one failure is not enough");
    let actions = sim.on(Event::Health((id, Err("503".to_owned()))));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(m)] if m.id == new.id));
    assert!(actions.iter().any(|a| matches!(a, Action::StopHealth)));
    let failure = sim.status().last_failure.unwrap();
    assert!(
        failure.contains("health check failed 2 times in a row, last: 503"),
        "{failure}"
    );
}

#[test]
fn a_passing_health_check_after_settle_promotes() {
    let mut s = settings();
    s.health = Some(HealthPolicy {
        failures: 3,
        after: false,
    });
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(s, true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    sim.exit(1, exit_code(0));
    sim.on(Event::Health((id, Err("timeout".to_owned()))));
    sim.after(SETTLE);
    let actions = sim.on(Event::Health((id, Ok(()))));
    assert!(matches!(jobs(&actions)[..], [Job::Promote(m)] if m.id == new.id));
}

#[test]
fn sighup_during_a_trial_restarts_its_worker_and_its_settle_clock() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    sim.exit(1, exit_code(0));
    sim.after(SETTLE / 2);
    let actions = sim.signal(Sig::Hup);
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: true, .. } if r.id == new.id)
        ),
        "the cycle runs the release on trial again: {actions:?}"
    );
    let next = spawned(&actions)[0];
    sim.after(SETTLE / 2);
    sim.ready(next);
    let actions = sim.exit(id, exit_code(0));
    assert!(
        jobs(&actions).is_empty(),
        "the drained trial worker's exit is no failure"
    );
    assert!(
        jobs(&sim.after(SETTLE - Duration::from_millis(1))).is_empty(),
        "settle counts again from the new worker's ready"
    );
    let actions = sim.after(Duration::from_millis(1));
    assert!(matches!(jobs(&actions)[..], [Job::Promote(_)]));
}

#[test]
fn sighup_with_a_config_file_reloads_then_cycles() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    let actions = sim.signal(Sig::Hup);
    assert!(
        matches!(
            &actions[..],
            [Action::Reload {
                then: AfterReload::Cycle,
                ..
            }]
        ),
        "{actions:?}"
    );
    let mut new = settings();
    new.ready_timeout = Duration::from_secs(5);
    let actions = sim.on(Event::Reloaded {
        why: "SIGHUP".to_owned(),
        then: AfterReload::Cycle,
        result: Ok(Reloaded {
            summary: "reloaded".to_owned(),
            settings: new,
            updater: false,
            retired: Some(1),
        }),
    });
    assert_eq!(spawned(&actions), vec![2]);
    assert_eq!(
        sim.core.deadline().unwrap() - sim.now,
        Duration::from_secs(5),
        "the new ready_timeout applies"
    );
    sim.ready(2);
    let actions = sim.exit(1, exit_code(0));
    assert!(
        actions.iter().any(|a| matches!(a, Action::CloseSockets(1))),
        "the retired sockets close once their workers are gone"
    );
}

#[test]
fn a_refused_reload_changes_nothing_and_cycles_nothing() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    sim.signal(Sig::Hup);
    let actions = sim.on(Event::Reloaded {
        why: "SIGHUP".to_owned(),
        then: AfterReload::Cycle,
        result: Err("bad config".to_owned()),
    });
    assert!(spawned(&actions).is_empty());
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Notify(Notice::Ready(_)))));
    assert_eq!(sim.status().last_failure.as_deref(), Some("bad config"));
}

#[test]
fn a_reload_during_a_start_waits_for_it() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    sim.signal(Sig::Hup);
    sim.on(Event::Reloaded {
        why: "SIGHUP".to_owned(),
        then: AfterReload::Cycle,
        result: Err("first".to_owned()),
    });
    let actions = sim.signal(Sig::Usr1);
    assert!(actions.is_empty(), "no fetcher: nothing to check");
    // A cycle is under way: the reload coalesces.
    sim.on(Event::Control {
        request: Request::Restart,
        reply: 5,
        disk: Disk::default(),
    });
    let actions = sim.signal(Sig::Hup);
    assert!(!actions.iter().any(|a| matches!(a, Action::Reload { .. })));
    let actions = sim.ready(2);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Reload { .. })),
        "read once the start ended: {actions:?}"
    );
    assert!(replies(&actions)
        .iter()
        .any(|(t, v)| *t == 5 && v["ok"] == true));
}

#[test]
fn a_rollback_cycles_onto_previous_then_swaps_current() {
    let current = meta("2.0.0");
    let previous = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let disk = Disk {
        current: Some(current.clone()),
        previous: Some(previous.clone()),
        ..Disk::default()
    };
    let actions = sim.control(Request::Rollback, 11, disk.clone());
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: true, .. } if r.id == previous.id)
        ),
        "{actions:?}"
    );
    let refused = sim.control(Request::Rollback, 12, disk);
    assert!(replies(&refused)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("another change is under way"));
    let actions = sim.ready(2);
    assert!(matches!(
        jobs(&actions)[..],
        [Job::RollBack { to, hold: Some(held) }] if to.id == previous.id && *held == current.sha256
    ));
    let actions = sim.store_done(
        Done::RolledBack(previous.clone(), Ok(Some(current.id.clone()))),
        Some(previous.clone()),
    );
    let answer = &replies(&actions)[0];
    assert_eq!(answer.0, 11);
    assert_eq!(answer.1["current"], "1.0.0");
    assert_eq!(answer.1["held"], "2.0.0");
    assert_eq!(sim.status().counters.rollbacks, 1);
}

#[test]
fn a_rollback_is_refused_without_a_previous_or_during_a_trial() {
    let current = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let actions = sim.control(Request::Rollback, 1, Disk::default());
    assert!(replies(&actions)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("there is no previous release"));
    // Not onto a yanked release: the next check would take the host away
    // again, and hold the release it left.
    let actions = sim.control(
        Request::Rollback,
        3,
        Disk {
            current: Some(current.clone()),
            previous: Some(meta("1.5.0")),
            yanked: vec!["v1.5.0".to_owned()],
            ..Disk::default()
        },
    );
    assert!(replies(&actions)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("a signed manifest yanked"));
    assert!(spawned(&actions).is_empty());
    begin_trial(&mut sim, &meta("3.0.0"), Some(current));
    let actions = sim.control(
        Request::Rollback,
        2,
        Disk {
            previous: Some(meta("1.0.0")),
            ..Disk::default()
        },
    );
    assert!(replies(&actions)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("is on trial"));
}

#[test]
fn a_stop_during_a_cycle_drains_every_worker_then_exits() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.signal(Sig::Hup);
    let actions = sim.signal(Sig::Term);
    let mut ids = drained(&actions);
    ids.sort();
    assert_eq!(ids, vec![1, 2], "the starting worker drains too");
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Notify(Notice::Stopping))));
    // The starting worker's READY=1 changes nothing now.
    assert!(drained(&sim.ready(2)).is_empty());
    assert!(exit_of(&sim.exit(1, exit_code(0))).is_none());
    let actions = sim.exit(2, exit_code(0));
    assert_eq!(exit_of(&actions), Some(Stopped::Graceful));
    assert!(spawned(&sim.log).len() == 2, "nothing restarted");
}

#[test]
fn a_second_stop_kills_and_a_drain_deadline_kills() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.signal(Sig::Int);
    let actions = sim.after(DRAIN_TIMEOUT);
    assert_eq!(killed(&actions), vec![1], "past drain_timeout");
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.signal(Sig::Term);
    let actions = sim.signal(Sig::Term);
    assert_eq!(killed(&actions), vec![1]);
    assert_eq!(
        exit_of(&sim.exit(1, ExitStatus::from_raw(9))),
        Some(Stopped::Hard)
    );
}

#[test]
fn a_stop_during_a_trial_abandons_it_without_a_verdict() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current));
    sim.ready(id);
    let actions = sim.signal(Sig::Term);
    assert!(matches!(jobs(&actions)[..], [Job::Abandon(m)] if m.id == new.id));
    assert_eq!(sim.status().counters.failed_trials, 0);
}

#[test]
fn a_release_installed_during_a_trial_waits_for_it() {
    let current = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &meta("2.0.0"), Some(current.clone()));
    let actions = sim.on(Event::Installed {
        release: meta("3.0.0"),
        leaves: None,
        hold: 8,
    });
    assert!(jobs(&actions).is_empty(), "queued");
    let actions = sim.on(Event::Installed {
        release: meta("4.0.0"),
        leaves: None,
        hold: 9,
    });
    assert!(
        actions.iter().any(|a| matches!(a, Action::Release(8))),
        "a newer install replaces the queued one"
    );
    sim.ready(id);
    let actions = sim.exit(id, exit_code(1));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(_)]));
    let actions = sim.store_done(Done::Failed(meta("2.0.0"), Ok(())), Some(current));
    assert!(actions.iter().any(|a| matches!(a, Action::Release(7))));
    assert!(
        matches!(jobs(&actions)[..], [Job::BeginTrial(m, c)] if m.id == "4.0.0" && c.attempt == 1)
    );
}

#[test]
fn the_first_release_starts_the_first_worker_and_a_failed_one_waits() {
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        waiting_for_release: true,
        updater: true,
        ..Boot::default()
    });
    assert!(spawned(&actions).is_empty());
    let restart = sim.control(Request::Restart, 3, Disk::default());
    assert!(replies(&restart)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("no release is installed yet"));
    let first = meta("1.0.0");
    let id = begin_trial(&mut sim, &first, None);
    let actions = sim.exit(id, exit_code(1));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(_)]));
    assert!(spawned(&actions).is_empty(), "nothing to go back to");
    assert_eq!(sim.core.deadline(), None, "no restart of nothing");
}

#[test]
fn an_interrupted_first_trial_is_recorded_again_after_its_wait() {
    let first = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        retry: Some((first.clone(), 2, Duration::from_secs(1))),
        updater: true,
        hold: Some(4),
        ..Boot::default()
    });
    assert!(actions.is_empty(), "{actions:?}");
    let actions = sim.after(Duration::from_secs(1));
    assert!(
        matches!(jobs(&actions)[..], [Job::BeginTrial(m, c)] if m.id == first.id && c.attempt == 2)
    );
    let actions = sim.store_done(Done::TrialBegun(first.clone(), Ok(())), None);
    assert_eq!(spawned(&actions), vec![1]);
}

#[test]
fn a_failed_promotion_write_is_retried() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    sim.after(SETTLE);
    let error = crate::release::Error::Io(crate::fsutil::IoError {
        what: "rename",
        path: PathBuf::from("releases/current"),
        source: std::io::Error::other("disk full"),
    });
    sim.store_done(Done::Promoted(new.clone(), Err(error)), Some(current));
    let actions = sim.after(PROMOTE_RETRY);
    assert!(matches!(jobs(&actions)[..], [Job::Promote(m)] if m.id == new.id));
}

#[test]
fn upgrade_asks_for_a_check_and_answers_with_its_outcome() {
    let mut sim = Sim::new(settings(), true);
    sim.boot(Boot {
        current: Some(meta("1.0.0")),
        updater: true,
        ..Boot::default()
    });
    let actions = sim.control(Request::Upgrade { force: false }, 21, Disk::default());
    assert!(actions.iter().any(|a| matches!(a, Action::CheckNow)));
    let actions = sim.on(Event::Checked(update::CheckReport {
        at: 0,
        outcome: "nothing_new",
        detail: "1.0.0".to_owned(),
        failed: None,
        yanked: Vec::new(),
    }));
    assert_eq!(replies(&actions)[0].1["outcome"], "nothing_new");
    let actions = sim.control(Request::Upgrade { force: true }, 22, Disk::default());
    assert!(matches!(jobs(&actions)[..], [Job::ClearHeld]));
}

#[test]
fn a_reexec_waits_until_nothing_is_half_done() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    let actions = sim.control(Request::Reexec { binary: None }, 31, Disk::default());
    assert!(actions.iter().any(|a| matches!(a, Action::CheckReexec(_))));
    // A cycle starts: the re-exec waits for it.
    sim.control(Request::Restart, 32, Disk::default());
    let actions = sim.on(Event::ReexecChecked(Ok("baton 9.9.9".to_owned())));
    assert!(!actions.iter().any(|a| matches!(a, Action::Exec { .. })));
    let actions = sim.ready(2);
    let (reply, carry) = actions
        .iter()
        .find_map(|a| match a {
            Action::Exec { reply, carry, .. } => Some((*reply, carry)),
            _ => None,
        })
        .expect("execs once no worker starts");
    assert_eq!(reply, Some(31));
    assert_eq!(carry.active, Some(2));
    let states: Vec<_> = carry.workers.iter().map(|w| (w.id, w.state)).collect();
    assert!(
        matches!(
            states[..],
            [
                (1, CarriedState::Draining { .. }),
                (2, CarriedState::Serving { .. })
            ]
        ),
        "{states:?}"
    );
}

#[test]
fn a_self_upgrade_execs_into_the_new_build_once_nothing_is_half_done() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    // A cycle is under way when the new build of baton is ready.
    sim.control(Request::Restart, 32, Disk::default());
    let up = crate::master::self_update::Ready {
        version: "9.9.9".to_owned(),
        binary: PathBuf::from("/srv/releases/.baton/9.9.9-abcdef12/baton"),
        release: meta("9.9.9-abcdef12"),
    };
    let actions = sim.on(Event::SelfReady(Box::new(up.clone())));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Exec { .. } | Action::CheckReexec(_))),
        "checked already, and it waits for the cycle: {actions:?}"
    );
    // A second offer while one is pending changes nothing.
    sim.on(Event::SelfReady(Box::new(up)));
    let actions = sim.ready(2);
    let execs: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Exec {
                binary,
                reply,
                upgrade,
                ..
            } => Some((
                binary.clone(),
                *reply,
                upgrade.as_ref().map(|u| u.version.clone()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        execs,
        vec![(
            PathBuf::from("/srv/releases/.baton/9.9.9-abcdef12/baton"),
            None,
            Some("9.9.9".to_owned())
        )]
    );
}

#[test]
fn a_reexec_is_refused_after_its_wait_limit() {
    let mut sim = Sim::with(settings(), true, true);
    sim.boot(Boot {
        current: Some(meta("1.0.0")),
        updater: true,
        ..Boot::default()
    });
    sim.ready(1);
    sim.control(Request::Reexec { binary: None }, 41, Disk::default());
    // A control request waits for a check that never ends.
    sim.control(Request::Upgrade { force: false }, 42, Disk::default());
    sim.on(Event::ReexecChecked(Ok("baton 9.9.9".to_owned())));
    assert!(sim
        .after(REEXEC_WAIT_LIMIT - Duration::from_secs(1))
        .is_empty());
    let actions = sim.after(Duration::from_secs(1));
    let (_, refused) = replies(&actions)
        .into_iter()
        .find(|(t, _)| *t == 41)
        .expect("the re-exec is answered");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("was not idle for 120s"), "{error}");
    assert!(
        error.contains("control requests wait for their outcome"),
        "{error}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Exec { .. })));
}

#[test]
fn a_reexec_whose_binary_fails_its_checks_is_refused() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    sim.control(Request::Reexec { binary: None }, 51, Disk::default());
    let again = sim.control(Request::Reexec { binary: None }, 52, Disk::default());
    assert!(replies(&again)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("already under way"));
    let actions = sim.on(Event::ReexecChecked(Err("exit 1".to_owned())));
    let error = replies(&actions)[0].1["error"].as_str().unwrap().to_owned();
    assert!(error.contains("failed its checks: exit 1"), "{error}");
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    let actions = sim.control(Request::Reexec { binary: None }, 53, Disk::default());
    assert!(replies(&actions)[0].1["error"]
        .as_str()
        .unwrap()
        .contains("only such a master can re-exec"));
}

#[test]
fn restarts_needed_by_a_reload_are_named() {
    let dir = std::path::Path::new("/srv/app");
    let parse = |text: &str| crate::config::Config::parse(text, dir).unwrap();
    let base = "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n";
    let with_releases = parse(&format!("{base}[releases]\nbinary = \"hello\"\n"));
    let releases = with_releases.releases.as_ref();
    let command = &with_releases.program.command;
    assert_eq!(
        restart_needed(releases, true, command, &with_releases),
        Ok(())
    );
    let keep = parse(&format!("{base}[releases]\nbinary = \"hello\"\nkeep = 9\n"));
    assert!(restart_needed(releases, true, command, &keep)
        .unwrap_err()
        .starts_with("releases.keep changed from 3 to 9"));
    let none = parse(base);
    assert_eq!(
        restart_needed(releases, true, command, &none).unwrap_err(),
        "the [releases] section was removed: a restart is needed to apply it"
    );
    let fetch = parse(&format!(
        "{base}[fetch]\nsource = \"file\"\npath = \"dist/hello\"\n"
    ));
    assert!(restart_needed(None, false, command, &fetch)
        .unwrap_err()
        .starts_with("a [fetch] section was added"));
}

#[test]
fn a_trial_worker_that_dies_while_a_restart_replaces_it_fails_the_trial() {
    let mut s = settings();
    s.ready = Ready::Delay(Duration::from_secs(5));
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(s, true);
    let actions = sim.boot(Boot {
        current: Some(current.clone()),
        ..Boot::default()
    });
    assert_eq!(spawned(&actions), vec![1]);
    sim.until_deadline();
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.until_deadline();
    sim.exit(1, exit_code(0));
    // The restart's worker (of the same release) takes 5 s to count as
    // ready; the first dies meanwhile.
    let next = spawned(&sim.signal(Sig::Hup))[0];
    let actions = sim.exit(id, ExitStatus::from_raw(9));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(m)] if m.id == new.id));
    assert_eq!(
        killed(&actions),
        vec![next],
        "the starting worker of the failed release must not become ready"
    );
    sim.exit(next, ExitStatus::from_raw(9));
    let actions = sim.until_deadline();
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: false, .. } if r.id == current.id)
        ),
        "current serves again: {actions:?}"
    );
}

#[test]
fn a_reexec_waits_for_a_reload_that_a_cycle_coalesced() {
    let mut sim = Sim::with(settings(), false, true);
    sim.serving(None);
    sim.control(Request::Reexec { binary: None }, 61, Disk::default());
    sim.control(Request::Restart, 62, Disk::default());
    sim.on(Event::ReexecChecked(Ok("baton 9.9.9".to_owned())));
    // A SIGHUP while worker 2 starts: its reload follows worker 2's ready.
    sim.signal(Sig::Hup);
    let actions = sim.ready(2);
    assert!(actions.iter().any(|a| matches!(a, Action::Reload { .. })));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Exec { .. })),
        "not before the reload's cycle: {actions:?}"
    );
    let actions = sim.on(Event::Reloaded {
        why: "coalesced reload".to_owned(),
        then: AfterReload::Cycle,
        result: Ok(Reloaded {
            summary: "reloaded".to_owned(),
            settings: settings(),
            updater: false,
            retired: None,
        }),
    });
    assert_eq!(spawned(&actions), vec![3]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Exec { .. })));
    sim.exit(1, exit_code(0));
    let actions = sim.ready(3);
    let carry = actions
        .iter()
        .find_map(|a| match a {
            Action::Exec { carry, .. } => Some(carry),
            _ => None,
        })
        .expect("execs once the reload's cycle is done");
    assert_eq!(carry.active, Some(3));
}

fn notes(actions: &[Action]) -> Vec<&Note> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn a_trial_is_reported_when_recorded_and_when_promoted() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    sim.on(Event::Installed {
        release: new.clone(),
        leaves: None,
        hold: 7,
    });
    let actions = sim.store_done(Done::TrialBegun(new.clone(), Ok(())), Some(current.clone()));
    let started = notes(&actions);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].outcome, Outcome::Started);
    assert_eq!(started[0].version, "2.0.0");
    assert_eq!(started[0].from.as_deref(), Some("1.0.0"));
    let pos = |f: &dyn Fn(&Action) -> bool| actions.iter().position(f).unwrap();
    assert!(
        pos(&|a| matches!(a, Action::Report(_))) < pos(&|a| matches!(a, Action::Spawn { .. })),
        "started is reported before the trial worker starts"
    );
    let id = spawned(&actions)[0];
    sim.ready(id);
    sim.after(SETTLE);
    let actions = sim.store_done(
        Done::Promoted(new.clone(), Ok(Some(current.id.clone()))),
        Some(new.clone()),
    );
    let promoted = notes(&actions);
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].outcome, Outcome::Promoted);
    assert_eq!(promoted[0].from.as_deref(), Some("1.0.0"));
    let trials = &sim.status().trials["2.0.0"];
    assert_eq!(trials["started"], 1);
    assert_eq!(trials["promoted"], 1);
}

#[test]
fn a_failed_trial_is_reported_with_its_stage_and_last_stderr_line() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    let actions = sim.exit(id, exit_code(3));
    let failed = notes(&actions);
    assert_eq!(failed.len(), 1);
    let n = failed[0];
    assert_eq!((n.outcome, n.stage), (Outcome::Failed, Some(Stage::Start)));
    assert_eq!(
        n.stderr.as_deref(),
        Some(format!("worker {id} says hi").as_str())
    );
    let detail = n.detail.as_deref().unwrap();
    assert!(
        detail.ends_with("exited before it was ready: exit code 3"),
        "{detail}"
    );
    // A release that never ran: its probe failed in the update loop.
    let actions = sim.on(Event::Checked(update::CheckReport {
        at: 0,
        outcome: "error",
        detail: "probe failed".to_owned(),
        failed: Some(update::Rejected {
            version: "3.0.0".to_owned(),
            stage: Stage::Probe,
            detail: "probe failed with exit code 1".to_owned(),
        }),
        yanked: Vec::new(),
    }));
    let probe = notes(&actions);
    assert_eq!(probe[0].stage, Some(Stage::Probe));
    assert_eq!(probe[0].version, "3.0.0");
    let status = sim.status();
    assert_eq!(status.trials["2.0.0"]["failed"], 1);
    assert_eq!(status.trials["3.0.0"]["failed"], 1);
}

#[test]
fn a_trial_that_misses_its_ready_deadline_fails_at_the_ready_stage() {
    let current = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    begin_trial(&mut sim, &meta("2.0.0"), Some(current));
    let actions = sim.after(READY_TIMEOUT);
    assert_eq!(notes(&actions)[0].stage, Some(Stage::Ready));
}

#[test]
fn a_yank_seen_during_a_trial_ends_it_at_the_yank_stage() {
    let current = meta("1.0.0");
    let new = meta("2.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(current.clone()));
    let id = begin_trial(&mut sim, &new, Some(current.clone()));
    sim.ready(id);
    let check = |yanked: &[&str]| update::CheckReport {
        at: 0,
        outcome: "yanked",
        detail: String::new(),
        failed: None,
        yanked: yanked.iter().map(|v| v.to_string()).collect(),
    };
    // A yank of another version changes nothing.
    let actions = sim.on(Event::Checked(check(&["1.5.0"])));
    assert!(jobs(&actions).is_empty(), "{actions:?}");
    assert!(sim.status().on_trial.is_some());
    // Its own version (as `v2.0.0`) ends it: failed, back to current.
    let actions = sim.on(Event::Checked(check(&["v2.0.0"])));
    assert!(matches!(jobs(&actions)[..], [Job::Fail(m)] if m.id == new.id));
    let n = notes(&actions);
    assert_eq!(
        (n[0].outcome, n[0].stage),
        (Outcome::Failed, Some(Stage::Yank))
    );
    assert!(n[0].detail.as_deref().unwrap().contains("yanked"));
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Spawn { release: Some(r), own_dir: false, .. } if r.id == current.id)
        ),
        "current takes over: {actions:?}"
    );
    assert!(sim.status().on_trial.is_none());
}

#[test]
fn a_version_written_with_a_v_is_counted_under_its_semver_name() {
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(meta("1.0.0")));
    begin_trial(&mut sim, &meta("v2.0.0"), Some(meta("1.0.0")));
    // `rollout watch` asks Prometheus for version="2.0.0".
    assert_eq!(sim.status().trials["2.0.0"]["started"], 1);
    assert!(!sim.status().trials.contains_key("v2.0.0"));
}

#[test]
fn leaving_a_yanked_release_is_reported_once_promoted() {
    let yanked = meta("2.0.0");
    let back = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(yanked.clone()));
    let id = begin_trial_leaving(&mut sim, &back, Some(yanked.clone()), Some("2.0.0"));
    assert_eq!(sim.status().trials["1.0.0"]["started"], 1);
    sim.ready(id);
    let actions = sim.after(SETTLE);
    assert!(matches!(jobs(&actions)[..], [Job::Promote(m)] if m.id == back.id));
    assert!(
        notes(&actions).is_empty(),
        "nothing is left before promotion"
    );
    let actions = sim.store_done(
        Done::Promoted(back.clone(), Ok(Some(yanked.id.clone()))),
        Some(back.clone()),
    );
    let n = notes(&actions);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(
        (n[0].outcome, n[0].version.as_str()),
        (Outcome::Promoted, "1.0.0")
    );
    assert_eq!(
        (n[1].outcome, n[1].version.as_str()),
        (Outcome::Yanked, "2.0.0")
    );
    assert_eq!(n[1].from.as_deref(), Some("2.0.0"));
    assert_eq!(n[1].detail.as_deref(), Some("back to 1.0.0"));
    assert_eq!(sim.status().trials["2.0.0"]["yanked"], 1);
}

fn record(id: &str, attempts: u32, from: Option<&str>, leaves: Option<&str>) -> TrialRecord {
    TrialRecord {
        id: id.to_owned(),
        sha256: meta(id).sha256,
        started_at: 0,
        attempts,
        version: Some(id.to_owned()),
        from: from.map(str::to_owned),
        leaves: leaves.map(str::to_owned),
    }
}

#[test]
fn an_interrupted_way_back_from_a_yank_is_retried_while_the_yanked_release_serves() {
    let yanked = meta("2.0.0");
    let back = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        current: Some(yanked.clone()),
        retry: Some((back.clone(), 2, Duration::from_secs(1))),
        recorded: Some(Recorded::Kept(record(
            "1.0.0",
            1,
            Some("2.0.0"),
            Some("2.0.0"),
        ))),
        updater: true,
        hold: Some(4),
        ..Boot::default()
    });
    assert_eq!(
        spawned(&actions),
        vec![1],
        "the yanked release serves meanwhile"
    );
    sim.ready(1);
    let actions = sim.after(Duration::from_secs(1));
    match jobs(&actions)[..] {
        [Job::BeginTrial(m, c)] => {
            assert_eq!((m.id.as_str(), c.attempt), ("1.0.0", 2));
            assert_eq!(c.leaves.as_deref(), Some("2.0.0"));
            assert_eq!(c.from.as_deref(), Some("2.0.0"));
        }
        _ => panic!("no attempt recorded: {actions:?}"),
    }
    let actions = sim.store_done(Done::TrialBegun(back.clone(), Ok(())), Some(yanked.clone()));
    assert_eq!(
        spawned(&actions),
        vec![2],
        "a graceful cycle onto the way back"
    );
    sim.ready(2);
    let actions = sim.after(SETTLE);
    assert!(matches!(jobs(&actions)[..], [Job::Promote(m)] if m.id == back.id));
    let actions = sim.store_done(
        Done::Promoted(back.clone(), Ok(Some(yanked.id.clone()))),
        Some(back.clone()),
    );
    let n = notes(&actions);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(
        (n[0].outcome, n[0].from.as_deref()),
        (Outcome::Promoted, Some("2.0.0"))
    );
    assert_eq!(
        (n[1].outcome, n[1].version.as_str()),
        (Outcome::Yanked, "2.0.0")
    );
    assert!(
        actions.iter().any(|a| matches!(a, Action::Release(4))),
        "the update loop goes on"
    );
}

#[test]
fn a_promotion_cut_short_by_the_masters_death_is_reported_at_the_next_start() {
    let back = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        current: Some(back.clone()),
        recorded: Some(Recorded::Promoted(record(
            "1.0.0",
            1,
            Some("2.0.0"),
            Some("2.0.0"),
        ))),
        updater: true,
        ..Boot::default()
    });
    assert_eq!(spawned(&actions), vec![1]);
    let n = notes(&actions);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(
        (n[0].outcome, n[0].version.as_str(), n[0].from.as_deref()),
        (Outcome::Promoted, "1.0.0", Some("2.0.0"))
    );
    assert_eq!(
        (n[1].outcome, n[1].detail.as_deref()),
        (Outcome::Yanked, Some("back to 1.0.0"))
    );
    // A record of another release than `current` names reports nothing.
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        current: Some(meta("0.9.0")),
        recorded: Some(Recorded::Promoted(record("1.0.0", 1, None, None))),
        ..Boot::default()
    });
    assert!(notes(&actions).is_empty());
}

#[test]
fn a_trial_the_masters_death_failed_is_reported_failed_at_the_next_start() {
    let mut sim = Sim::new(settings(), true);
    let actions = sim.boot(Boot {
        current: Some(meta("1.0.0")),
        recorded: Some(Recorded::Failed {
            record: record("2.0.0", 1, Some("1.0.0"), None),
            why: "the master died during the trial (attempt 1)".to_owned(),
        }),
        updater: true,
        ..Boot::default()
    });
    assert_eq!(spawned(&actions), vec![1], "current serves");
    let n = notes(&actions);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(
        (
            n[0].outcome,
            n[0].version.as_str(),
            n[0].from.as_deref(),
            n[0].stage
        ),
        (Outcome::Failed, "2.0.0", Some("1.0.0"), Some(Stage::Settle))
    );
    assert!(n[0].detail.as_deref().unwrap().contains("master died"));
    assert_eq!(sim.status().trials["2.0.0"]["failed"], 1);
    assert_eq!(sim.status().trial_failures["2.0.0"]["settle"], 1);
}

#[test]
fn a_failed_way_back_from_a_yanked_release_reports_no_yank() {
    let yanked = meta("2.0.0");
    let back = meta("1.0.0");
    let mut sim = Sim::new(settings(), true);
    sim.serving(Some(yanked.clone()));
    let id = begin_trial_leaving(&mut sim, &back, Some(yanked.clone()), Some("2.0.0"));
    let actions = sim.exit(id, exit_code(3));
    let n = notes(&actions);
    assert_eq!(n.len(), 1);
    assert_eq!(
        (n[0].outcome, n[0].version.as_str()),
        (Outcome::Failed, "1.0.0")
    );
    assert!(!sim.status().trials.contains_key("2.0.0"));
}

#[test]
fn status_shows_how_long_a_worker_has_drained() {
    let mut sim = Sim::new(settings(), false);
    sim.serving(None);
    sim.signal(Sig::Hup);
    sim.ready(2);
    sim.after(Duration::from_secs(7));
    let status = sim.status();
    let old = status.workers.iter().find(|w| w.id == 1).unwrap();
    assert_eq!(
        (old.state.as_str(), old.draining_for_secs),
        ("draining", Some(7))
    );
    let new = status.workers.iter().find(|w| w.id == 2).unwrap();
    assert_eq!((new.ready_for_secs, new.draining_for_secs), (Some(7), None));
}
