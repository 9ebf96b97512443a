//! A remoting connection over any [`Link`]: many concurrent calls matched to responses by
//! opaque, one-way sends, incoming requests with a way to respond, per-call timeouts, graceful
//! close and prompt failure of everything pending when the link breaks.

use crate::sync::Plain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{
    DEFAULT_MAX_FRAME, DEFAULT_MAX_HEADER, EncodeError, FLAG_ONEWAY, FLAG_RESPONSE,
    RemotingCommand, SerializeType, peek_oversized,
};
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::{Link, LinkInfo, LinkRx, LinkTx};

/// Connection tuning.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest frame this side encodes.
    pub max_frame: usize,
    /// Incoming requests buffered before the reader stops reading (backpressure on the peer).
    pub incoming_capacity: usize,
    /// Longest header parsed: a request with a longer one is refused unparsed (its opaque is
    /// found by a scan) and a response with one is dropped.
    pub max_header: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            incoming_capacity: 1024,
            max_header: DEFAULT_MAX_HEADER,
        }
    }
}

type Reply = oneshot::Sender<Result<RemotingCommand, TransportError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closing,
    Closed,
}

#[derive(Debug)]
struct Calls {
    state: State,
    pending: HashMap<i32, Reply>,
    /// Incoming requests whose response has not been sent yet.
    responding: usize,
    /// Why the connection ended (what later calls fail with).
    ended: Option<TransportError>,
}

impl Calls {
    /// The error for a call that finds the connection not open.
    fn refusal(&self) -> TransportError {
        self.ended.clone().unwrap_or(TransportError::Closed)
    }
}

impl Calls {
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.responding == 0
    }
}

#[derive(Debug)]
struct Shared<T> {
    tx: T,
    info: LinkInfo,
    max_frame: usize,
    max_header: usize,
    next_opaque: AtomicI32,
    calls: Mutex<Calls>,
    idle: Notify,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// A header encoding buffer kept between sends (taken by one sender at a time; a
    /// concurrent sender uses a fresh one), so a steady stream of sends allocates none.
    scratch: Mutex<Vec<u8>>,
}

/// Header buffers larger than this are not kept for the next send.
const SCRATCH_KEEP: usize = 64 << 10;

impl<T: LinkTx> Shared<T> {
    /// The calls in flight. A poisoned lock (a panic mid-update) ends the connection: its
    /// state is marked closed so no new call starts on it, and the calls still pending fail
    /// when the link goes (their replies are dropped, which callers see as a lost connection).
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        match self.calls.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                self.calls.clear_poison();
                tracing::error!("a panic interrupted a connection's call bookkeeping; closing it");
                g.state = State::Closed;
                g.ended.get_or_insert(TransportError::ConnectionLost(
                    "a panic interrupted the connection's bookkeeping".into(),
                ));
                g.pending.clear();
                g
            }
        }
    }

    async fn send_command(&self, cmd: &RemotingCommand) -> Result<(), TransportError> {
        let mut scratch = self
            .scratch
            .try_lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default();
        if scratch.capacity() == 0 {
            scratch.reserve(256);
        }
        let sent = {
            let enc = cmd.encode_with(&mut scratch, self.max_frame)?;
            let mut buf = self.tx.reserve(enc.frame_len()).await?;
            enc.write_to(&mut buf);
            self.tx.send(buf)
        };
        if scratch.capacity() <= SCRATCH_KEEP
            && let Ok(mut kept) = self.scratch.try_lock()
            && kept.capacity() == 0
        {
            *kept = scratch;
        }
        sent
    }

    fn complete(&self, response: RemotingCommand) {
        let reply = {
            let mut calls = self.calls();
            let reply = calls.pending.remove(&response.opaque);
            if calls.state != State::Open && calls.idle() {
                self.idle.notify_waiters();
            }
            reply
        };
        match reply {
            Some(reply) => {
                let _ = reply.send(Ok(response));
            }
            None => tracing::debug!(
                peer = %self.info.peer,
                opaque = response.opaque,
                "response for an unknown or timed-out call dropped"
            ),
        }
    }

    fn response_done(&self) {
        let mut calls = self.calls();
        calls.responding -= 1;
        if calls.state != State::Open && calls.idle() {
            self.idle.notify_waiters();
        }
    }

    /// Stops new calls; returns false if already closed.
    fn stop_calls(&self) -> bool {
        let mut calls = self.calls();
        match calls.state {
            State::Closed => false,
            _ => {
                calls.state = State::Closing;
                calls.ended.get_or_insert(TransportError::Closed);
                true
            }
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.calls().idle() {
                return;
            }
            notified.await;
        }
    }

    /// Ends the connection: every pending call fails with `reason`, the link is aborted.
    fn fail(&self, reason: TransportError) {
        let call_error = match &reason {
            TransportError::Closed => TransportError::Closed,
            TransportError::ConnectionLost(_) => reason.clone(),
            other => TransportError::ConnectionLost(other.to_string()),
        };
        let pending = {
            let mut calls = self.calls();
            if calls.ended.is_none() {
                calls.ended = Some(call_error.clone());
            }
            if calls.state == State::Closed && calls.pending.is_empty() {
                drop(calls);
                self.tx.abort(reason);
                return;
            }
            calls.state = State::Closed;
            std::mem::take(&mut calls.pending)
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(call_error.clone()));
        }
        self.tx.abort(reason);
        self.idle.notify_waiters();
    }
}

/// A handle to one remoting connection. Clones share it; dropping the last clone aborts it.
#[derive(Debug)]
pub struct Connection<T: LinkTx> {
    handle: Arc<Handle<T>>,
}

impl<T: LinkTx> Clone for Connection<T> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

#[derive(Debug)]
struct Handle<T: LinkTx> {
    shared: Arc<Shared<T>>,
}

impl<T: LinkTx> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.fail(TransportError::Closed);
        if let Some(reader) = self.shared.reader.lock().ok().and_then(|mut r| r.take()) {
            reader.abort();
        }
    }
}

/// Removes a call's pending entry when the call ends in any way (response, timeout, cancel).
struct PendingGuard<'a, T: LinkTx> {
    shared: &'a Shared<T>,
    opaque: i32,
}

impl<T: LinkTx> Drop for PendingGuard<'_, T> {
    fn drop(&mut self) {
        let mut calls = self.shared.calls();
        if calls.pending.remove(&self.opaque).is_some()
            && calls.state != State::Open
            && calls.idle()
        {
            self.shared.idle.notify_waiters();
        }
    }
}

impl<T: LinkTx> Connection<T> {
    /// Starts a connection over `link`. Returns the handle and the stream of requests the peer
    /// sends; if that stream is dropped, incoming requests are answered
    /// `REQUEST_CODE_NOT_SUPPORTED`.
    pub fn new<L: Link<Tx = T>>(link: L, config: ConnectionConfig) -> (Self, IncomingRequests<T>) {
        let (tx, rx, info) = link.split();
        tracing::debug!(
            transport = info.transport,
            local = %info.local,
            peer = %info.peer,
            reason = %info.reason,
            "connection established"
        );
        let shared = Arc::new(Shared {
            tx,
            info,
            max_frame: config.max_frame,
            max_header: config.max_header,
            next_opaque: AtomicI32::new(0),
            calls: Mutex::new(Calls {
                state: State::Open,
                pending: HashMap::new(),
                responding: 0,
                ended: None,
            }),
            idle: Notify::new(),
            reader: Mutex::new(None),
            scratch: Mutex::new(Vec::new()),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity.max(1));
        let reader = tokio::spawn(read_loop(shared.clone(), rx, incoming_tx));
        *shared.reader.lock().plain() = Some(reader);
        (
            Self {
                handle: Arc::new(Handle { shared }),
            },
            IncomingRequests { rx: incoming_rx },
        )
    }

    fn shared(&self) -> &Shared<T> {
        &self.handle.shared
    }

    /// Sends `request` and waits for its response, at most `timeout`. The opaque is assigned
    /// here. Fails with [`TransportError::Timeout`], or promptly with
    /// [`TransportError::ConnectionLost`] if the link breaks.
    pub async fn call(
        &self,
        mut request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, TransportError> {
        let shared = self.shared();
        request.flag &= !(FLAG_RESPONSE | FLAG_ONEWAY);
        let (reply, response) = oneshot::channel();
        let opaque = {
            let mut calls = shared.calls();
            if calls.state != State::Open {
                return Err(calls.refusal());
            }
            let mut opaque = shared.next_opaque.fetch_add(1, Relaxed);
            while calls.pending.contains_key(&opaque) {
                opaque = shared.next_opaque.fetch_add(1, Relaxed);
            }
            calls.pending.insert(opaque, reply);
            opaque
        };
        request.opaque = opaque;
        let _guard = PendingGuard { shared, opaque };
        let exchange = async {
            shared.send_command(&request).await?;
            response.await.map_err(|_| TransportError::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// Sends a one-way request (no response). Returns once it is queued.
    pub async fn oneway(&self, mut request: RemotingCommand) -> Result<(), TransportError> {
        let shared = self.shared();
        {
            let calls = shared.calls();
            if calls.state != State::Open {
                return Err(calls.refusal());
            }
        }
        request.flag = (request.flag & !FLAG_RESPONSE) | FLAG_ONEWAY;
        request.opaque = shared.next_opaque.fetch_add(1, Relaxed);
        shared.send_command(&request).await
    }

    /// Graceful close: new calls are refused, pending calls and responses to incoming requests
    /// get up to `grace` to finish, queued frames are flushed, then the link is closed. Calls
    /// still pending after `grace` fail with [`TransportError::Closed`].
    pub async fn close(&self, grace: Duration) {
        let shared = self.shared();
        if shared.stop_calls() {
            let deadline = tokio::time::Instant::now() + grace;
            let _ = tokio::time::timeout_at(deadline, shared.wait_idle()).await;
            let _ = tokio::time::timeout_at(deadline, shared.tx.close()).await;
        }
        shared.fail(TransportError::Closed);
        if let Some(reader) = shared.reader.lock().ok().and_then(|mut r| r.take()) {
            reader.abort();
        }
    }

    /// Abrupt close: everything pending fails now.
    pub fn abort(&self) {
        self.shared().fail(TransportError::Closed);
    }

    /// True if `other` is a handle to this same connection.
    pub fn same(&self, other: &Connection<T>) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// True until the connection starts closing or breaks.
    pub fn is_open(&self) -> bool {
        self.shared().calls().state == State::Open
    }

    /// Number of calls waiting for a response.
    pub fn pending_calls(&self) -> usize {
        self.shared().calls().pending.len()
    }

    /// Facts about the underlying link.
    pub fn info(&self) -> &LinkInfo {
        &self.shared().info
    }

    /// The link's counters.
    pub fn counters(&self) -> &LinkCounters {
        &self.shared().info.counters
    }
}

async fn read_loop<T: LinkTx, R: LinkRx>(
    shared: Arc<Shared<T>>,
    mut rx: R,
    incoming: mpsc::Sender<IncomingRequest<T>>,
) {
    let reason = loop {
        let frame = match rx.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // Clean end of stream: the peer sends nothing more, but may still read the
                // responses to requests it already sent.
                let lost = TransportError::ConnectionLost("peer closed the connection".into());
                let pending = {
                    let mut calls = shared.calls();
                    calls.state = State::Closing;
                    calls.ended.get_or_insert_with(|| lost.clone());
                    std::mem::take(&mut calls.pending)
                };
                for (_, reply) in pending {
                    let _ = reply.send(Err(lost.clone()));
                }
                drop(incoming);
                shared.wait_idle().await;
                shared.tx.close().await;
                break TransportError::ConnectionLost("peer closed the connection".into());
            }
            Err(e) => break e,
        };
        if let Some(big) = peek_oversized(&frame, shared.max_header) {
            match (big.opaque, big.flag) {
                (Some(opaque), flag) if flag & (FLAG_RESPONSE | FLAG_ONEWAY) == 0 => {
                    let mut refusal = RemotingCommand::response(
                        crate::protocol::response_code::INVALID_PARAMETER,
                        Some(format!(
                            "request header of {} bytes exceeds {}",
                            big.header_len, shared.max_header
                        )),
                    );
                    refusal.opaque = opaque;
                    refusal.serialize_type = big.serialize_type;
                    if let Err(e) = shared.send_command(&refusal).await {
                        break e;
                    }
                }
                (_, flag) if flag & FLAG_ONEWAY != 0 => {}
                (opaque, _) => tracing::warn!(
                    peer = %shared.info.peer,
                    header_len = big.header_len,
                    ?opaque,
                    "oversized header dropped unparsed"
                ),
            }
            continue;
        }
        let command = match RemotingCommand::decode_frame(frame) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = %shared.info.peer, error = %e, "malformed frame; closing connection");
                break e.into();
            }
        };
        if command.is_response() {
            shared.complete(command);
            continue;
        }
        let responder = Responder::new(&shared, &command);
        let request = IncomingRequest { command, responder };
        if let Err(mpsc::error::SendError(request)) = incoming.send(request).await {
            let code = request.command.code;
            tokio::spawn(async move {
                let _ = request
                    .responder
                    .respond(RemotingCommand::response(
                        crate::protocol::response_code::REQUEST_CODE_NOT_SUPPORTED,
                        Some(format!(
                            "request code {code} is not served on this connection"
                        )),
                    ))
                    .await;
            });
        }
    };
    shared.fail(reason);
}

/// Requests sent by the peer, in arrival order.
#[derive(Debug)]
pub struct IncomingRequests<T: LinkTx> {
    rx: mpsc::Receiver<IncomingRequest<T>>,
}

impl<T: LinkTx> IncomingRequests<T> {
    /// The next request; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<IncomingRequest<T>> {
        self.rx.recv().await
    }
}

/// One request from the peer and the means to answer it.
#[derive(Debug)]
pub struct IncomingRequest<T: LinkTx> {
    /// The request.
    pub command: RemotingCommand,
    /// Sends the response (a no-op for one-way requests).
    pub responder: Responder<T>,
}

/// Answers one incoming request. Dropping it without responding releases its slot in the
/// graceful-close accounting (the peer's call then times out).
#[derive(Debug)]
pub struct Responder<T: LinkTx> {
    shared: Option<Arc<Shared<T>>>,
    opaque: i32,
    serialize_type: SerializeType,
}

impl<T: LinkTx> Responder<T> {
    fn new(shared: &Arc<Shared<T>>, request: &RemotingCommand) -> Self {
        let shared = if request.is_oneway() {
            None
        } else {
            shared.calls().responding += 1;
            Some(shared.clone())
        };
        Self {
            shared,
            opaque: request.opaque,
            serialize_type: request.serialize_type,
        }
    }

    /// True if the request expects no response.
    pub fn is_oneway(&self) -> bool {
        self.shared.is_none()
    }

    /// Sends `response` with the request's opaque, in the request's header encoding (JSON when
    /// the binary header cannot carry the code).
    pub async fn respond(mut self, mut response: RemotingCommand) -> Result<(), TransportError> {
        let Some(shared) = self.shared.take() else {
            return Ok(());
        };
        response.opaque = self.opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        response.serialize_type = self.serialize_type;
        let mut result = shared.send_command(&response).await;
        if let Err(TransportError::Encode(
            EncodeError::CodeOutOfRange(_) | EncodeError::VersionOutOfRange(_),
        )) = result
        {
            response.serialize_type = SerializeType::Json;
            result = shared.send_command(&response).await;
        }
        shared.response_done();
        result
    }
}

impl<T: LinkTx> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.response_done();
        }
    }
}
