//! Process-level tests: the real `baton` binary, real example workers, real
//! signals and sockets on loopback.

mod support;

mod config;
mod control;
mod credentials;
mod cycle;
mod delta;
mod failure;
mod first_trial;
mod fleet;
mod github;
mod go;
mod grpc;
mod health;
mod hooks;
mod hostile;
mod http2;
mod hygiene;
mod in_place;
mod lifecycle;
mod longlived;
mod operate;
mod pid1;
mod python;
mod python_helper;
mod reexec;
mod release;
mod release_workflow;
mod reload;
mod reports;
mod s3;
mod self_upgrade;
mod supervisord;
mod tls;
mod trial;
mod watch;
mod yank;
