//! A Prometheus text endpoint (`GET /metrics`) for a running engine
//! process, on a loopback address only (DESIGN §4, §5).
//!
//! The figures come from the run's shared counters and gauges; the server is
//! a plain thread answering one short request per connection, bounded in
//! request size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::job::ArrangementGauge;
use crate::run::RunGauges;
use crate::source::SourceCounters;

/// What the endpoint reports.
#[derive(Clone)]
pub struct MetricsSources {
    /// Events read and late.
    pub counters: Arc<SourceCounters>,
    /// Frontier, committed cut, sidecar queue.
    pub gauges: Arc<RunGauges>,
    /// Records held in arrangements, per worker of this process.
    pub arrangements: Arc<Mutex<Vec<Arc<ArrangementGauge>>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The metrics in the Prometheus text exposition format.
pub fn render(sources: &MetricsSources) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        writeln!(
            out,
            "# HELP weir_{name} {help}\n# TYPE weir_{name} {kind}\nweir_{name} {value}"
        )
        .ok();
    };
    let c = &sources.counters;
    metric(
        "events_in_total",
        "counter",
        "Events read from the input log.",
        c.events_read.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "late_events_total",
        "counter",
        "Events refused as late.",
        c.events_late.load(Ordering::Relaxed).to_string(),
    );
    let g = &sources.gauges;
    let frontier = g.output_frontier_ms.load(Ordering::Relaxed);
    let committed = g.committed_cut_ms.load(Ordering::Relaxed);
    if frontier != u64::MAX {
        metric(
            "output_frontier_ms",
            "gauge",
            "Event time below which all results are emitted.",
            frontier.to_string(),
        );
        metric(
            "frontier_lag_ms",
            "gauge",
            "Wall clock minus the output frontier.",
            now_ms().saturating_sub(frontier).to_string(),
        );
        if committed != u64::MAX {
            metric(
                "checkpoint_lag_ms",
                "gauge",
                "Output frontier minus the last committed cut.",
                frontier.saturating_sub(committed).to_string(),
            );
        }
    }
    if committed != u64::MAX {
        metric(
            "committed_cut_ms",
            "gauge",
            "Cut time of the newest committed checkpoint.",
            committed.to_string(),
        );
    }
    metric(
        "sidecar_queue_fill",
        "gauge",
        "Checkpoint shares queued for the sidecar.",
        g.sidecar_queued.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "sidecar_queue_capacity",
        "gauge",
        "Capacity of the sidecar queue.",
        g.sidecar_capacity.load(Ordering::Relaxed).to_string(),
    );
    writeln!(out, "# HELP weir_state_records Records held in arrangements, per worker.\n# TYPE weir_state_records gauge").ok();
    for (worker, a) in sources
        .arrangements
        .lock()
        .expect("poisoned")
        .iter()
        .enumerate()
    {
        writeln!(
            out,
            "weir_state_records{{worker=\"{worker}\"}} {}",
            a.records.load(Ordering::Relaxed)
        )
        .ok();
    }
    out
}

/// Serves `GET /metrics` on `addr` (loopback only) until `stop` is set.
/// Returns the bound address (useful with port 0).
pub fn serve(
    addr: SocketAddr,
    sources: MetricsSources,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--metrics-addr {addr} is not a loopback address"),
        ));
    }
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("weir-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).unwrap_or(0);
                    let first_line = String::from_utf8_lossy(&request[..n]);
                    let response = if first_line.starts_with("GET /metrics") {
                        let body = render(&sources);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                    };
                    let _ = stream.write_all(response.as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => tracing::warn!(error = %e, "metrics endpoint accept failed"),
            }
        }
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_prometheus_text_on_loopback_and_refuses_other_addresses() {
        let sources = MetricsSources {
            counters: Arc::default(),
            gauges: Arc::default(),
            arrangements: Arc::default(),
        };
        sources.counters.events_read.store(42, Ordering::Relaxed);
        sources
            .gauges
            .output_frontier_ms
            .store(10_000, Ordering::Relaxed);
        sources
            .gauges
            .committed_cut_ms
            .store(7_000, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        assert!(serve(
            "0.0.0.0:0".parse().unwrap(),
            sources.clone(),
            Arc::clone(&stop)
        )
        .is_err());
        let addr = serve("127.0.0.1:0".parse().unwrap(), sources, Arc::clone(&stop)).unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        stop.store(true, Ordering::Release);
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.contains("\nweir_events_in_total 42\n"),
            "{response}"
        );
        assert!(
            response.contains("\nweir_checkpoint_lag_ms 3000\n"),
            "{response}"
        );
    }
}
