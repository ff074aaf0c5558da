//! The coordinator's handle on its worker processes: spawn the bench binary again as
//! `worker`, hand each its job, send commands, and wait for the events they answer with.
//!
//! Workers are children with `kill_on_drop`, so an error in the coordinator never leaves them
//! running; they also exit by themselves at their deadline or when their stdin closes.

use anyhow::{anyhow, bail, Context, Result};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::ipc::{Command, Event, JobSpec};

struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
}

pub struct Fleet {
    members: Vec<Member>,
    events: mpsc::UnboundedReceiver<(usize, Option<Event>)>,
    /// Events that arrived while waiting for something else.
    pending: Vec<(usize, Event)>,
}

impl Fleet {
    pub async fn spawn(jobs: &[JobSpec]) -> Result<Fleet> {
        let exe = std::env::current_exe().context("locate own binary")?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut members = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let mut child = Process::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn worker")?;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker stdout"))?;
            let mut line = serde_json::to_string(job).context("encode job")?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await.context("send job")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event =
                        serde_json::from_str::<Event>(&line).unwrap_or_else(|e| Event::Failed {
                            error: format!("unreadable worker output ({e}): {line}"),
                        });
                    if tx.send((i, Some(event))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
            members.push(Member {
                child,
                stdin: Some(stdin),
            });
        }
        Ok(Fleet {
            members,
            events,
            pending: Vec::new(),
        })
    }

    pub async fn send(&mut self, worker: usize, command: &Command) -> Result<()> {
        let mut line = serde_json::to_string(command).context("encode command")?;
        line.push('\n');
        let member = self
            .members
            .get_mut(worker)
            .ok_or_else(|| anyhow!("no worker {worker}"))?;
        let stdin = member
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker {worker} stdin closed"))?;
        stdin
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("command to worker {worker}"))
    }

    pub async fn send_to(&mut self, workers: &[usize], command: &Command) -> Result<()> {
        for &w in workers {
            self.send(w, command).await?;
        }
        Ok(())
    }

    /// Waits for one event accepted by `pick` from each worker in `workers`, in that order.
    pub async fn collect<T>(
        &mut self,
        workers: &[usize],
        within: Duration,
        what: &str,
        mut pick: impl FnMut(Event) -> Result<T, Event>,
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + within;
        let mut got: Vec<Option<T>> = workers.iter().map(|_| None).collect();
        // Earlier arrivals first.
        let pending = std::mem::take(&mut self.pending);
        for (w, event) in pending {
            match workers.iter().position(|&x| x == w) {
                Some(slot) if got[slot].is_none() => match pick(event) {
                    Ok(value) => got[slot] = Some(value),
                    Err(event) => self.pending.push((w, event)),
                },
                _ => self.pending.push((w, event)),
            }
        }
        while got.iter().any(Option::is_none) {
            let next = timeout_at(deadline, self.events.recv()).await;
            let Ok(Some((w, event))) = next else {
                let missing: Vec<usize> = workers
                    .iter()
                    .zip(&got)
                    .filter(|(_, g)| g.is_none())
                    .map(|(w, _)| *w)
                    .collect();
                bail!("timed out waiting for {what} from workers {missing:?}");
            };
            let Some(event) = event else {
                bail!("worker {w} exited while waiting for {what}");
            };
            if let Event::Failed { error } = &event {
                bail!("worker {w} failed: {error}");
            }
            match workers.iter().position(|&x| x == w) {
                Some(slot) if got[slot].is_none() => match pick(event) {
                    Ok(value) => got[slot] = Some(value),
                    Err(event) => self.pending.push((w, event)),
                },
                _ => self.pending.push((w, event)),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Closes every worker's stdin (they exit on EOF) and waits a little for them; any still
    /// running afterwards is killed.
    pub async fn close(mut self) {
        for member in &mut self.members {
            member.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for member in &mut self.members {
            if timeout_at(deadline, member.child.wait()).await.is_err() {
                let _ = member.child.kill().await;
            }
        }
    }
}
