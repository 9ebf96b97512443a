//! The remoting server: accepts links from any backend and dispatches each request by code to
//! an async handler. Unknown codes get `REQUEST_CODE_NOT_SUPPORTED`.

use crate::sync::Plain;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::codec::RemotingCommand;
use crate::connection::{Connection, ConnectionConfig, IncomingRequest};
use crate::endpoint::Endpoint;
use crate::error::TransportError;
use crate::link::{Link, LinkTx, Listener, Transport};
use crate::protocol::response_code;
use crate::remoting::CallMetrics;

/// Header fields a request may carry (RocketMQ's requests use a few dozen): more are
/// refused with `INVALID_PARAMETER` before any handler sees them.
pub const MAX_REQUEST_FIELDS: usize = 1024;

/// Clients newer than this (RocketMQ V5_3_1) understand `GO_AWAY` during a graceful drain.
const GO_AWAY_MIN_VERSION: i32 = 476;

/// A request as a handler sees it.
#[derive(Debug)]
pub struct Request {
    /// The request command (body borrowed from the receive buffer).
    pub command: RemotingCommand,
    /// Peer address.
    pub peer: Arc<str>,
    /// Backend that carried it.
    pub transport: &'static str,
}

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = RemotingCommand> + Send>>;

/// Serves one request code. Implemented for async closures `Fn(Request) -> impl Future`.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response (opaque, flags and header encoding are set by the server).
    fn handle(&self, request: Request) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RemotingCommand> + Send + 'static,
{
    fn handle(&self, request: Request) -> HandlerFuture {
        Box::pin(self(request))
    }
}

/// Request code → handler.
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<i32, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut codes: Vec<_> = self.routes.keys().collect();
        codes.sort();
        f.debug_struct("Router").field("codes", &codes).finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: serves `code` with `handler`.
    pub fn route(mut self, code: i32, handler: impl Handler) -> Self {
        self.add(code, handler);
        self
    }

    /// Serves `code` with `handler`, replacing an earlier one.
    pub fn add(&mut self, code: i32, handler: impl Handler) {
        self.routes.insert(code, Arc::new(handler));
    }

    /// Runs the handler of the request's code.
    pub async fn dispatch(&self, request: Request) -> RemotingCommand {
        self.start(request).await
    }

    /// The handler's future for `request` (unknown codes get a ready
    /// `REQUEST_CODE_NOT_SUPPORTED`).
    pub fn start(&self, request: Request) -> HandlerFuture {
        match self.routes.get(&request.command.code) {
            Some(h) => h.handle(request),
            None => {
                let code = request.command.code;
                tracing::debug!(code, peer = %request.peer, "request code not supported");
                Box::pin(std::future::ready(RemotingCommand::response(
                    response_code::REQUEST_CODE_NOT_SUPPORTED,
                    Some(format!("request code {code} is not supported")),
                )))
            }
        }
    }
}

/// Server tuning.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// Requests of one connection handled concurrently; more wait (and the reader stops
    /// reading once the incoming queue is full).
    pub max_inflight_per_connection: usize,
    /// Where service times per request code are recorded, if anywhere.
    pub metrics: Option<Arc<CallMetrics>>,
    /// Open connections beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (IP) beyond which its new ones are closed.
    pub max_connections_per_client: usize,
    /// A connection with no request for this long and nothing in progress is closed
    /// (RocketMQ clients send a heartbeat every 30 s). `None` keeps idle connections.
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            max_inflight_per_connection: 4096,
            metrics: None,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            idle_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// The client address of a peer `ip:port` (the whole string when it has no port).
fn client_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    }
}

/// A remoting server over the transport `T`.
#[derive(Debug, Clone)]
pub struct Server<T: Transport> {
    transport: T,
    router: Arc<Router>,
    config: ServerConfig,
}

type TxOf<T> = <<T as Transport>::Link as Link>::Tx;

struct Registry<Tx: LinkTx> {
    next_id: AtomicU64,
    count: Arc<AtomicUsize>,
    live: Mutex<HashMap<u64, Connection<Tx>>>,
    /// Open connections per client address.
    per_client: Mutex<HashMap<String, usize>>,
    /// Gives the memory of closed connections back.
    trim: Arc<crate::heap::TrimAfterCloses>,
}

impl<Tx: LinkTx> Registry<Tx> {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection<Tx>>> {
        self.live.lock().plain()
    }

    /// Counts a new connection from `client` unless a cap is reached (then says which).
    fn admit(&self, client: &str, cfg: &ServerConfig) -> Result<(), &'static str> {
        let mut per = self.per_client.lock().plain();
        if self.count.load(Ordering::Relaxed) >= cfg.max_connections {
            return Err("the server's connection limit");
        }
        let n = per.entry(client.to_owned()).or_insert(0);
        if *n >= cfg.max_connections_per_client {
            return Err("the per-client connection limit");
        }
        *n += 1;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, client: &str) {
        let mut per = self.per_client.lock().plain();
        if let Some(n) = per.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                per.remove(client);
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running server. Dropping it stops accepting (connections keep running until they end);
/// [`ServerHandle::shutdown`] drains gracefully.
#[derive(Debug)]
pub struct ServerHandle {
    local: Endpoint,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
    live: Arc<AtomicUsize>,
}

impl ServerHandle {
    /// The endpoint actually bound.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Graceful drain: stop accepting; requests arriving from now on are refused (`GO_AWAY`
    /// for clients that understand it, `SERVICE_NOT_AVAILABLE` otherwise); requests in flight
    /// are answered; then every connection closes. Bounded by `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), self.task).await;
    }
}

impl<T: Transport> Server<T> {
    /// A server dispatching with `router`.
    pub fn new(transport: T, router: Router, config: ServerConfig) -> Self {
        Self {
            transport,
            router: Arc::new(router),
            config,
        }
    }

    /// Binds `endpoint` and starts serving in the background.
    pub async fn bind(&self, endpoint: &Endpoint) -> Result<ServerHandle, TransportError> {
        let listener = self.transport.bind(endpoint).await?;
        Ok(self.serve(listener))
    }

    /// Starts serving on a listener bound earlier with the same transport (for processes that
    /// must know their address before they can build the router). Connections that arrived
    /// in between wait in the listener's backlog.
    pub fn serve(&self, listener: <T as Transport>::Listener) -> ServerHandle {
        let local = listener.local_endpoint();
        tracing::info!(endpoint = %local, "remoting server listening");
        let live = Arc::new(AtomicUsize::new(0));
        let registry: Arc<Registry<TxOf<T>>> = Arc::new(Registry {
            next_id: AtomicU64::new(0),
            count: live.clone(),
            live: Mutex::new(HashMap::new()),
            per_client: Mutex::new(HashMap::new()),
            trim: Arc::default(),
        });
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(accept_loop(
            listener,
            self.router.clone(),
            self.config.clone(),
            registry.clone(),
            stop_rx,
        ));
        ServerHandle {
            local,
            stop,
            task,
            live,
        }
    }
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    router: Arc<Router>,
    config: ServerConfig,
    registry: Arc<Registry<<L::Link as Link>::Tx>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let draining = Arc::new(AtomicBool::new(false));
    let mut connections = JoinSet::new();
    let mut refused = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(link) => {
                    let client = client_of(&link.info().peer).to_owned();
                    if let Err(limit) = registry.admit(&client, &config) {
                        // Closed at once (dropping the link); logged sparingly, as a flood
                        // of refusals is what the limit is for.
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%client, limit, refused, "connection refused");
                        }
                        drop(link);
                        continue;
                    }
                    connections.spawn(serve_connection(
                        link,
                        router.clone(),
                        config.clone(),
                        registry.clone(),
                        draining.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let grace = stop.borrow().unwrap_or_default();
    draining.store(true, Ordering::SeqCst);
    let live: Vec<_> = registry.live().values().cloned().collect();
    let mut closing = JoinSet::new();
    for conn in live {
        closing.spawn(async move { conn.close(grace).await });
    }
    while closing.join_next().await.is_some() {}
    connections.abort_all();
}

fn observe(metrics: &Option<Arc<CallMetrics>>, code: i32, arrived: std::time::Instant, sent: bool) {
    if let Some(m) = metrics {
        if sent {
            m.record(code, arrived.elapsed());
        } else {
            m.record_failure();
        }
    }
}

async fn serve_connection<K: Link>(
    link: K,
    router: Arc<Router>,
    config: ServerConfig,
    registry: Arc<Registry<K::Tx>>,
    draining: Arc<AtomicBool>,
) {
    let (conn, mut incoming) = Connection::new(link, config.connection.clone());
    let info = conn.info().clone();
    tracing::info!(
        transport = info.transport,
        peer = %info.peer,
        reason = %info.reason,
        "accepted connection"
    );
    let peer: Arc<str> = info.peer.as_str().into();
    let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
    registry.live().insert(id, conn.clone());
    let permits = Arc::new(Semaphore::new(config.max_inflight_per_connection.max(1)));
    let mut handlers = JoinSet::new();
    let idle_for = config.idle_timeout;
    let mut idle_at = idle_for.map(|d| tokio::time::Instant::now() + d);
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {
                idle_at = idle_for.map(|d| tokio::time::Instant::now() + d);
                continue;
            }
            _ = async { tokio::time::sleep_until(idle_at.expect("set")).await },
                if idle_at.is_some() && handlers.is_empty() =>
            {
                tracing::info!(peer = %info.peer, idle = ?idle_for, "closing an idle connection");
                break;
            }
        };
        let Some(IncomingRequest { command, responder }) = next else {
            break;
        };
        idle_at = idle_for.map(|d| tokio::time::Instant::now() + d);
        let arrived = std::time::Instant::now();
        let code = command.code;
        if draining.load(Ordering::Relaxed) {
            let refusal = if command.version >= GO_AWAY_MIN_VERSION {
                RemotingCommand::response(response_code::GO_AWAY, Some("please go away".into()))
            } else {
                RemotingCommand::response(
                    response_code::SERVICE_NOT_AVAILABLE,
                    Some("server is shutting down".into()),
                )
            };
            let _ = responder.respond(refusal).await;
            continue;
        }
        let fields = command.ext_fields.as_ref().map_or(0, |f| f.len());
        if fields > MAX_REQUEST_FIELDS {
            // Decoding was linear; refusing here keeps the handlers' per-field work bounded.
            let refusal = RemotingCommand::response(
                response_code::INVALID_PARAMETER,
                Some(format!(
                    "request header has {fields} fields; at most {MAX_REQUEST_FIELDS}"
                )),
            );
            let _ = responder.respond(refusal).await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let request = Request {
            command,
            peer: peer.clone(),
            transport: info.transport,
        };
        // Most handlers finish without waiting: run them here and spawn only those that wait
        // (long polls, disk syncs), saving a task per request.
        let mut handler = router.start(request);
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match handler.as_mut().poll(cx) {
                std::task::Poll::Ready(r) => Some(r),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        match ready {
            Some(response) => {
                let sent = responder.respond(response).await;
                observe(&config.metrics, code, arrived, sent.is_ok());
                drop(permit);
            }
            None => {
                let metrics = config.metrics.clone();
                handlers.spawn(async move {
                    let response = handler.await;
                    let sent = responder.respond(response).await;
                    observe(&metrics, code, arrived, sent.is_ok());
                    drop(permit);
                });
            }
        }
        while handlers.try_join_next().is_some() {}
    }
    while handlers.join_next().await.is_some() {}
    conn.close(Duration::from_secs(5)).await;
    registry.live().remove(&id);
    registry.release(client_of(&info.peer));
    registry.trim.connection_closed();
    tracing::debug!(peer = %info.peer, "connection ended");
}
