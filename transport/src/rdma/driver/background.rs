//! Slow paths of a link, in a task of their own: the core's timers (keepalive, liveness, a
//! lazy credit return), receive slots returned while the peer is short of credits, the close,
//! and the bootstrap socket whose end means the peer process is gone. The data path never
//! waits on this task.

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::state::Shared;
use crate::error::TransportError;
use crate::rdma::verbs::VerbsQp;

pub(super) async fn run<Q: VerbsQp>(sh: Arc<Shared<Q>>) {
    loop {
        let wake = sh.wake_background.notified();
        let returned = sh.recv_region.returned_notify.notified();
        tokio::pin!(wake, returned);
        wake.as_mut().enable();
        returned.as_mut().enable();
        let (deadline, finished) = {
            let mut inner = sh.lock();
            sh.drive(&mut inner, false);
            (inner.core.poll_timeout(), inner.torn_down)
        };
        if finished {
            sh.wake_all();
            return;
        }
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(sh.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = &mut returned => {}
            _ = sleep => {}
            _ = sh.dead.wait() => {}
        }
    }
}

/// Gives other tasks a turn without a trip through the I/O driver: the task wakes itself and
/// goes to the back of the run queue (`tokio::task::yield_now` instead defers the task until
/// the reactor has been polled, which costs an `epoll_wait` per spin).
#[derive(Default)]
pub(super) struct SpinOnce(bool);

impl std::future::Future for SpinOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// The TCP connection of the handshake stays open for liveness: its end (peer process died)
/// fails the link at once, unless the peer had already said goodbye.
pub(super) async fn watch_bootstrap<Q: VerbsQp>(sh: Arc<Shared<Q>>, mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::select! {
        r = stream.read(&mut buf) => r,
        _ = sh.dead.wait() => return,
    };
    {
        let mut inner = sh.lock();
        match read {
            // Nothing may follow `Ready` on the bootstrap socket.
            Ok(n) if n > 0 => inner.teardown(
                &sh,
                TransportError::ConnectionLost(
                    "protocol violation: data on the bootstrap connection".into(),
                ),
            ),
            _ => {
                sh.drive(&mut inner, false);
                if !inner.eof && !inner.closed {
                    inner.teardown(
                        &sh,
                        TransportError::ConnectionLost(
                            "bootstrap connection closed (peer gone)".into(),
                        ),
                    );
                }
            }
        }
    }
    sh.wake_all();
}
