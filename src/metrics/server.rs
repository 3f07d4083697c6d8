//! The HTTP side of an endpoint: one thread answering `GET /metrics` on a
//! loopback address, one short request per connection, bounded in request
//! size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a metrics endpoint answers: the exposition text.
pub type Render = Box<dyn Fn() -> String + Send>;

/// Serves `GET /metrics` with `render`'s text on `addr` (loopback only)
/// until `stop` is set. Returns the bound address (useful with port 0).
pub fn serve_text(
    addr: SocketAddr,
    render: Render,
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
                        let body = render();
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
