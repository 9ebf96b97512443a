//! The metrics endpoint: HTTP/1.1 `GET /metrics` (Prometheus text) and `GET /metrics/hdr`
//! (histogram buckets), one request per connection. Bounded: at most 16 scrapes at once, 8 KiB of
//! request head, 5 s per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Registry;

const MAX_HEAD: usize = 8 * 1024;
const CONNECTION_TIME: Duration = Duration::from_secs(5);
const MAX_SCRAPES: usize = 16;

/// A serving metrics endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address served (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `registry` on `addr` (`host:port`).
pub async fn serve(addr: &str, registry: &'static Registry) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_TIME, answer(stream, registry)).await;
                drop(permit);
            });
        }
    });
    Ok(MetricsServer { addr, task })
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", &registry.render()).await,
        ("GET", "/metrics/hdr") => respond(&mut stream, "200 OK", &registry.render_hdr()).await,
        ("GET", _) => respond(&mut stream, "404 Not Found", "try /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "GET only\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET http://addr{path}` and the body; for tests and the benchmark runner (no redirects, no
/// chunked bodies: what [`serve`] answers).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(CONNECTION_TIME, s.read_to_end(&mut raw))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "metrics scrape timed out")
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_registry_and_refuses_other_requests() {
        static REG: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        let reg = REG.get_or_init(Registry::default);
        reg.counter("http_test_total", "t", vec![])
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        reg.histogram("http_test_seconds", "t", vec![])
            .record_ns(1500);
        let server = serve("127.0.0.1:0", reg).await.expect("bind");
        let addr = server.local_addr();
        let (code, body) = get(addr, "/metrics").await.expect("scrape");
        assert_eq!(code, 200);
        assert!(body.contains("http_test_total 7\n"), "{body}");
        let (code, body) = get(addr, "/metrics/hdr").await.expect("hdr");
        assert_eq!(code, 200);
        let parsed = crate::metrics::parse_hdr(&body);
        assert_eq!(parsed[0].1.count(), 1);
        assert_eq!(get(addr, "/nope").await.expect("404").0, 404);
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&vec![b'a'; MAX_HEAD + 2048]).await;
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw).await;
        assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
        assert_eq!(get(addr, "/metrics").await.expect("still serving").0, 200);
    }
}
