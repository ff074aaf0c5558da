//! The command line: subcommands, their options, and the validation of the options every
//! scenario shares into a `run::Setup` (the target must be on loopback).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::ipc::{CloseMode, TargetSpec};
use crate::run::Setup;

#[derive(Debug, Parser)]
#[command(
    name = "resound-bench",
    version,
    about = "Load and latency benchmarks for Pusher-protocol servers (loopback only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Open N idle connections, each subscribed to M public channels, at a target rate.
    Connections(ConnectionsArgs),
    /// S subscribers over C channels; publishers at a fixed rate; end-to-end latency and loss.
    Fanout(FanoutArgs),
    /// Presence rooms with typing client events and HTTP-triggered messages.
    Chat(ChatArgs),
    /// Everyone disconnects at once and reconnects while a publisher keeps sending.
    Storm(StormArgs),
    /// Run the minimal baseline broadcaster.
    BaselineServer(BaselineArgs),
    /// Internal: one worker process of a run (driven over stdin/stdout).
    #[command(hide = true)]
    Worker,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server base URL; WebSocket at {url}/app/{key}, HTTP API at {url}/apps/{id}/events.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Publish through this node instead of --url (a cluster: subscribers on --url,
    /// publishers on another node, so every delivery crosses the cluster backend).
    #[arg(long)]
    pub publish_url: Option<String>,
    #[arg(long, default_value = "app-id")]
    pub app_id: String,
    #[arg(long, default_value = "app-key")]
    pub key: String,
    #[arg(long, default_value = "app-secret")]
    pub secret: String,
    /// Also print one JSON line per run.
    #[arg(long)]
    pub json: bool,
    /// Server process to read VmRSS from, before and after connecting.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds: publish time (fanout, chat), hold time (connections), reconnect limit (storm).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Client worker processes (default: 2, or one per 6,000 connections).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses 127.0.0.2.. to spread client sockets over (0: 127.0.0.1 only).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// New connections per second, all workers together (0: as fast as possible).
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Connection attempts in flight at once, all workers together.
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
    /// Seconds a connection may take to connect and subscribe.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for late deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Start the built-in baseline server and run against it instead of --url.
    #[arg(long)]
    pub baseline: bool,
    /// Share of the subscriber connections (0 to 1) that offer permessage-deflate and inflate
    /// what arrives compressed.
    #[arg(long, default_value_t = 0.0)]
    pub deflate_share: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Public channels each connection subscribes to.
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: u64,
    /// Distinct channels to spread the subscriptions over.
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Target connection rate per second (overrides --connect-rate).
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Signed `POST /apps/{id}/events` on public channels.
    Http,
    /// `client-` events from WebSocket publishers on private channels.
    ClientEvents,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Channels each subscriber joins.
    #[arg(long, default_value_t = 1)]
    pub channels_per_sub: u64,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Padding added to each payload, in bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Channel names start with this (`private-` is put before it for `--via client-events`):
    /// benches run at once against nodes of one cluster use their own to keep their channels
    /// apart (scripts/bench-cluster-cost.sh).
    #[arg(long, default_value = "bench-")]
    pub channel_prefix: String,
    /// HTTP keep-alive connections publishing in parallel.
    #[arg(long, default_value_t = 4)]
    pub http_conns: usize,
    /// Client events per second per publisher connection (servers limit this to 10).
    #[arg(long, default_value_t = 8.0)]
    pub client_event_rate: f64,
    /// Run the target and the baseline interleaved and report target/baseline ratios.
    #[arg(long)]
    pub ab: bool,
    /// A/B rounds (each round runs the target, then the baseline).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    #[arg(long, default_value_t = 10)]
    pub room_size: u64,
    /// Messages per second in total (typing client events plus HTTP messages).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Share of the rate sent as typing client events; the rest goes through HTTP.
    #[arg(long, default_value_t = 0.5)]
    pub typing_share: f64,
    /// HTTP keep-alive connections publishing in parallel.
    #[arg(long, default_value_t = 8)]
    pub http_conns: usize,
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Redis of the server's stream sink (`[[apps.streams]]`): report the entries written to
    /// `--stream-key` over the run (`XINFO STREAM` entries-added, before and after).
    #[arg(long, requires = "stream_key")]
    pub stream_redis: Option<String>,
    /// The stream key the server writes the chat's events to.
    #[arg(long, requires = "stream_redis")]
    pub stream_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections that disconnect and reconnect.
    #[arg(long, default_value_t = 2000)]
    pub connections: u64,
    /// Extra connections that stay connected through the storm (their loss is accounted).
    #[arg(long, default_value_t = 100)]
    pub steady: u64,
    /// Channels the connections are spread over (each publish goes to one of them).
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Publishes per second during the whole run.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of publishing before the storm.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of publishing after everyone is back.
    #[arg(long, default_value_t = 2.0)]
    pub post: f64,
    /// How the clients leave.
    #[arg(long, value_enum, default_value_t = CloseMode::Fin)]
    pub close: CloseMode,
    /// Reconnection attempts in flight at once, all workers together.
    #[arg(long, default_value_t = 2000)]
    pub reconnect_inflight: usize,
    /// Run the target and the baseline interleaved and report target/baseline ratios of the
    /// time to the first accept and to everyone back.
    #[arg(long)]
    pub ab: bool,
    /// A/B rounds (each round runs the target, then the baseline).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BaselineArgs {
    /// Port on 127.0.0.1 (0: any free port, printed on stdout).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Exit by itself after this many seconds.
    #[arg(long)]
    pub exit_after: Option<f64>,
    /// Exit when stdin closes (used when the bench starts it as a child).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

/// Parses `http://HOST[:PORT][/PREFIX]`; HOST must be a loopback IPv4 address or `localhost`.
pub fn parse_url(url: &str) -> Result<(Ipv4Addr, u16, String)> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http:// (the bench speaks plain ws:// and http://)");
    }
    let host = uri.host().context("--url has no host")?;
    let ip = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>()
            .with_context(|| format!("--url host {host} is not an IPv4 address"))?
    };
    if !ip.is_loopback() {
        bail!("--url must point at loopback (127.0.0.0/8); refusing to load {ip}");
    }
    let port = uri.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/').to_string();
    Ok((ip, port, prefix))
}

/// The client source addresses: 127.0.0.2 .. 127.0.0.(1+n), or 127.0.0.1 alone.
pub fn source_ips(n: u8) -> Vec<Ipv4Addr> {
    if n == 0 {
        return vec![Ipv4Addr::LOCALHOST];
    }
    (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(i)))
        .collect()
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("{what} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

impl CommonArgs {
    /// The run settings, targeting `port_override` on 127.0.0.1 when given (the baseline).
    pub fn setup(&self, port_override: Option<u16>) -> Result<Setup> {
        let (ip, port, prefix) = match port_override {
            Some(port) => (Ipv4Addr::LOCALHOST, port, String::new()),
            None => parse_url(&self.url)?,
        };
        let url = match port_override {
            Some(port) => format!("http://127.0.0.1:{port}"),
            None => self.url.clone(),
        };
        let target = TargetSpec {
            ip,
            port,
            prefix,
            key: self.key.clone(),
            secret: self.secret.clone(),
        };
        let publish_target = match (&self.publish_url, port_override) {
            (Some(u), None) => {
                let (ip, port, prefix) = parse_url(u)?;
                TargetSpec {
                    ip,
                    port,
                    prefix,
                    key: self.key.clone(),
                    secret: self.secret.clone(),
                }
            }
            _ => target.clone(),
        };
        Ok(Setup {
            target,
            publish_target,
            url,
            baseline: port_override.is_some(),
            app_id: self.app_id.clone(),
            workers: self.workers,
            source_ips: source_ips(self.source_ips),
            connect_rate: self.connect_rate.max(0.0),
            max_inflight: self.max_inflight.max(1),
            connect_timeout: seconds(self.connect_timeout, "--connect-timeout")?,
            drain: seconds(self.drain, "--drain")?,
            server_pid: self.server_pid,
            deflate_share: self.deflate_share.clamp(0.0, 1.0),
        })
    }

    pub fn duration_or(&self, default: f64) -> Result<Duration> {
        seconds(self.duration.unwrap_or(default), "--duration")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080").unwrap(),
            (Ipv4Addr::LOCALHOST, 8080, String::new())
        );
        assert_eq!(
            parse_url("http://localhost:6001/ws/").unwrap(),
            (Ipv4Addr::LOCALHOST, 6001, "/ws".to_string())
        );
        assert_eq!(parse_url("http://127.0.0.9").unwrap().1, 80);
        assert!(parse_url("http://10.0.0.1:8080").is_err());
        assert!(parse_url("http://example.com:8080").is_err());
        assert!(parse_url("https://127.0.0.1:8080").is_err());
    }

    #[test]
    fn source_addresses() {
        assert_eq!(source_ips(0), vec![Ipv4Addr::LOCALHOST]);
        assert_eq!(
            source_ips(2),
            vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
    }

    #[test]
    fn cli_parses_every_scenario() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "resound-bench",
            "fanout",
            "--via",
            "client-events",
            "--ab",
            "--json",
            "--duration",
            "3",
        ])
        .unwrap();
        match cli.command {
            Cmd::Fanout(f) => {
                assert_eq!(f.via, Via::ClientEvents);
                assert!(f.ab && f.common.json);
                assert_eq!(f.common.duration, Some(3.0));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["resound-bench", "storm", "--close", "rst"]).unwrap();
        assert!(matches!(cli.command, Cmd::Storm(s) if s.close == CloseMode::Rst && !s.ab));
        let cli = Cli::try_parse_from(["resound-bench", "storm", "--ab", "--rounds", "5"]).unwrap();
        assert!(matches!(cli.command, Cmd::Storm(s) if s.ab && s.rounds == 5));
    }
}
