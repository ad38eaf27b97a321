//! The fleet's trials as Prometheus saw them, for stores that cannot take
//! reports (a static HTTP site, a GitHub release): every master exports
//! `baton_trials_total{version,outcome}`, `baton_trial_failures_total
//! {version,stage}`, `baton_host_info{host_id}` and `baton_stranded`, and a
//! Prometheus server scrapes them. This reads one version's trials through
//! its HTTP query API (`/api/v1/query`) as the gate reads reports: a host
//! is a scrape `instance`, named by its `host_id` when it exports one, and
//! a failure says its stages; it failed, was promoted or started when its
//! counter for that outcome is above 0 within [`WINDOW`] (so a master that
//! died and went stale still counts); a started trial whose counter
//! already existed `silent_after` ago and has no outcome now is silent.
//!
//! It fails closed: an unreachable server, an error answer, or no baton
//! master at all in Prometheus is an error, never "no failures".

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::manifest::gate::{Reports, Seen};

/// How far back a trial counts.
pub const WINDOW: &str = "7d";
/// How long one query may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read, in bytes.
const ANSWER_LIMIT: usize = 4 << 20;

/// One version's trials, as Prometheus saw them.
#[derive(Debug, Clone, Default)]
pub struct Trials {
    /// Baton masters Prometheus scrapes now.
    pub hosts: usize,
    /// The trials, as the gate reads reports.
    pub reports: Reports,
}

/// A Prometheus server's query API.
pub struct Prometheus {
    base: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    /// The server at `base` (`http://127.0.0.1:9090`).
    pub fn new(base: &str) -> Result<Prometheus, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--prometheus {base:?} is not an http(s) URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
        Ok(Prometheus { base, client })
    }

    /// Runs an instant query; its samples as (labels, value).
    async fn query(&self, query: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let url = format!("{}/api/v1/query", self.base);
        let fail =
            |why: String| format!("cannot read Prometheus at {} ({query}): {why}", self.base);
        let mut response = self
            .client
            .get(&url)
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| fail(crate::errors::display_chain(&e)))?;
        let status = response.status();
        let mut bytes = Vec::new();
        // Read up to the cap, never the whole of an answer past it.
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(crate::errors::display_chain(&e)))?
        {
            if bytes.len() + chunk.len() > ANSWER_LIMIT {
                return Err(fail(format!("the answer is over {ANSWER_LIMIT} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "HTTP {status}, not a query API answer ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if answer.status != "success" {
            return Err(fail(format!(
                "{}: {}",
                answer.error_type.unwrap_or_else(|| "error".into()),
                answer.error.unwrap_or_else(|| format!("HTTP {status}"))
            )));
        }
        let data = answer
            .data
            .ok_or_else(|| fail("the answer has no data".into()))?;
        if data.result_type != "vector" {
            return Err(fail(format!("a {} answer, not a vector", data.result_type)));
        }
        data.result
            .into_iter()
            .map(|s| {
                let v: f64 = s
                    .value
                    .1
                    .parse()
                    .map_err(|_| fail(format!("the value {:?} is not a number", s.value.1)))?;
                Ok((s.metric, v))
            })
            .collect()
    }

    /// `version`'s trials: who failed, was promoted, or started (and since
    /// when, for `silent_after`), at `now`.
    pub async fn trials(
        &self,
        version: &str,
        silent_after: Duration,
        now: SystemTime,
    ) -> Result<Trials, String> {
        let hosts = self.query("count(baton_stranded)").await?;
        let hosts = hosts.first().map_or(0.0, |(_, v)| *v) as usize;
        if hosts == 0 {
            return Err(format!(
                "Prometheus at {} has no baton master (count(baton_stranded) is empty): no data \
                 is not a healthy fleet; check its scrape targets and each master's [control] \
                 metrics",
                self.base
            ));
        }
        // Masters export the version as reports name it (`v2.0.0` is
        // `2.0.0`), whatever the manifest wrote.
        let v = escape(&super::report::version_key(version));
        let outcomes = self
            .query(&format!(
                "max by (instance, outcome) (last_over_time(baton_trials_total{{version=\"{v}\"}}[{WINDOW}]))"
            ))
            .await?;
        let old = self
            .query(&format!(
                "max by (instance) (last_over_time(baton_trials_total{{version=\"{v}\",outcome=\"started\"}}[{WINDOW}] offset {}s))",
                silent_after.as_secs().max(1)
            ))
            .await?;
        let started_long_ago: BTreeSet<String> = old
            .into_iter()
            .filter(|(_, n)| *n > 0.0)
            .filter_map(|(m, _)| m.get("instance").cloned())
            .collect();
        // Where trials failed, and who each instance is: masters of this
        // version export both; older ones neither (then the instance, and
        // no stage, stand in).
        let mut stages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let failures = self
            .query(&format!(
                "max by (instance, stage) (last_over_time(baton_trial_failures_total{{version=\"{v}\"}}[{WINDOW}]))"
            ))
            .await?;
        for (labels, n) in failures {
            if let (Some(instance), Some(stage), true) =
                (labels.get("instance"), labels.get("stage"), n > 0.0)
            {
                stages
                    .entry(instance.clone())
                    .or_default()
                    .insert(stage.clone());
            }
        }
        let ids: BTreeMap<String, String> = self
            .query(&format!(
                "max by (instance, host_id) (last_over_time(baton_host_info[{WINDOW}]))"
            ))
            .await?
            .into_iter()
            .filter_map(|(m, _)| Some((m.get("instance")?.clone(), m.get("host_id")?.clone())))
            .collect();
        let host = |instance: &String| ids.get(instance).unwrap_or(instance).clone();
        let mut reports = Reports::default();
        for (labels, n) in outcomes {
            let (Some(instance), Some(outcome)) = (labels.get("instance"), labels.get("outcome"))
            else {
                reports.skipped += 1;
                continue;
            };
            if n <= 0.0 {
                continue;
            }
            match outcome.as_str() {
                "failed" => reports.failed.push(Seen {
                    host_id: host(instance),
                    at: now,
                    reason: Some(match stages.get(instance) {
                        Some(at) => format!(
                            "failed at {}",
                            at.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        None => "failed (baton_trials_total)".into(),
                    }),
                }),
                "promoted" => {
                    reports.promoted.insert(host(instance));
                }
                "started" => reports.started.push(Seen {
                    host_id: host(instance),
                    at: if started_long_ago.contains(instance) {
                        now.checked_sub(silent_after).unwrap_or(now)
                    } else {
                        now
                    },
                    reason: None,
                }),
                _ => {}
            }
        }
        Ok(Trials { hosts, reports })
    }
}

/// A label value inside double quotes.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 that answers every request with `body`.
    async fn answering(body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_refused_without_reading_it_whole() {
        let base = answering(vec![b' '; ANSWER_LIMIT + 1]).await;
        let e = Prometheus::new(&base)
            .unwrap()
            .query("up")
            .await
            .unwrap_err();
        assert!(e.contains("over 4194304 bytes"), "{e}");
    }

    #[tokio::test]
    async fn an_error_answer_fails_closed_with_its_words() {
        let base = answering(
            br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.to_vec(),
        )
        .await;
        let e = Prometheus::new(&base)
            .unwrap()
            .query("up{")
            .await
            .unwrap_err();
        assert!(e.contains("bad_data: parse error"), "{e}");
        assert!(Prometheus::new("ftp://x").is_err());
    }
}
