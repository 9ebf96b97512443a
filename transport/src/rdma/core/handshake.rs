//! The bootstrap exchange carried over the TCP connection that precedes (and then watches over)
//! an RDMA link. Fixed-size binary messages, big-endian:
//!
//! ```text
//! magic "RDMQ" | version u16 | kind u8 | reserved u8 | gid [16] | qpn u32 | psn u32 |
//! slot_size u32 | recv_slots u32 | max_frame u32 | generation u16 | reason u16 | lid u16
//! ```
//!
//! Client → server `Hello` (or `TcpOnly` when the client has no device); server → client
//! `Accept` or `Reject(reason)`; client → server `Ready` once its queue pair is ready to send.
//! A `Reject` or a failure before `Ready` falls back to TCP on the same socket when both sides
//! allow it.

/// Protocol magic.
pub const MAGIC: [u8; 4] = *b"RDMQ";
/// Protocol version.
pub const VERSION: u16 = 1;
/// Encoded size of every handshake message.
pub const MESSAGE_LEN: usize = 50;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloKind {
    /// Client offers RDMA with its parameters.
    Hello,
    /// Client has no usable device and asks for TCP on this socket.
    TcpOnly,
    /// Server accepts, with its parameters.
    Accept,
    /// Server refuses RDMA; the socket continues as TCP if the client allows.
    Reject,
    /// Client's queue pair is connected; RDMA traffic may start.
    Ready,
}

/// Why a server refuses RDMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The server has no usable device.
    NoDevice,
    /// The parameters are incompatible (e.g. different slot sizes).
    Incompatible,
    /// The server could not set up resources.
    Resources,
    /// The server only speaks TCP on this listener.
    Disabled,
}

impl RejectReason {
    fn code(self) -> u16 {
        match self {
            RejectReason::NoDevice => 1,
            RejectReason::Incompatible => 2,
            RejectReason::Resources => 3,
            RejectReason::Disabled => 4,
        }
    }
    fn from_code(c: u16) -> RejectReason {
        match c {
            1 => RejectReason::NoDevice,
            2 => RejectReason::Incompatible,
            4 => RejectReason::Disabled,
            _ => RejectReason::Resources,
        }
    }
}

/// One handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloMsg {
    /// Kind.
    pub kind: HelloKind,
    /// Sender's device GID.
    pub gid: [u8; 16],
    /// Sender's QP number.
    pub qpn: u32,
    /// Sender's first PSN.
    pub psn: u32,
    /// Size of the sender's receive slots (every message fits one).
    pub slot_size: u32,
    /// Receive slots the sender posts: the peer's initial credits.
    pub recv_slots: u32,
    /// Largest frame the sender accepts.
    pub max_frame: u32,
    /// Connection generation (distinguishes reconnects).
    pub generation: u16,
    /// Reject reason (Reject only).
    pub reason: Option<RejectReason>,
    /// Sender's port LID (InfiniBand link layer; 0 on RoCE).
    pub lid: u16,
}

impl HelloMsg {
    /// A message of `kind` with every parameter zero.
    pub fn bare(kind: HelloKind) -> Self {
        Self {
            kind,
            gid: [0; 16],
            qpn: 0,
            psn: 0,
            slot_size: 0,
            recv_slots: 0,
            max_frame: 0,
            generation: 0,
            reason: None,
            lid: 0,
        }
    }

    /// A rejection.
    pub fn reject(reason: RejectReason) -> Self {
        Self {
            reason: Some(reason),
            ..Self::bare(HelloKind::Reject)
        }
    }

    /// Encodes to the fixed wire size.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_be_bytes());
        b[6] = match self.kind {
            HelloKind::Hello => 1,
            HelloKind::TcpOnly => 2,
            HelloKind::Accept => 3,
            HelloKind::Reject => 4,
            HelloKind::Ready => 5,
        };
        b[8..24].copy_from_slice(&self.gid);
        b[24..28].copy_from_slice(&self.qpn.to_be_bytes());
        b[28..32].copy_from_slice(&self.psn.to_be_bytes());
        b[32..36].copy_from_slice(&self.slot_size.to_be_bytes());
        b[36..40].copy_from_slice(&self.recv_slots.to_be_bytes());
        b[40..44].copy_from_slice(&self.max_frame.to_be_bytes());
        b[44..46].copy_from_slice(&self.generation.to_be_bytes());
        b[46..48].copy_from_slice(
            &self
                .reason
                .map(RejectReason::code)
                .unwrap_or(0)
                .to_be_bytes(),
        );
        b[48..50].copy_from_slice(&self.lid.to_be_bytes());
        b
    }

    /// Decodes and validates framing (magic, version, kind). Parameter checks are
    /// [`check_params`].
    pub fn decode(b: &[u8]) -> Result<HelloMsg, HandshakeError> {
        if b.len() < MESSAGE_LEN {
            return Err(HandshakeError::Truncated(b.len()));
        }
        if b[..4] != MAGIC {
            return Err(HandshakeError::BadMagic([b[0], b[1], b[2], b[3]]));
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(HandshakeError::UnsupportedVersion(version));
        }
        let kind = match b[6] {
            1 => HelloKind::Hello,
            2 => HelloKind::TcpOnly,
            3 => HelloKind::Accept,
            4 => HelloKind::Reject,
            5 => HelloKind::Ready,
            other => return Err(HandshakeError::UnknownKind(other)),
        };
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let reason = u16::from_be_bytes([b[46], b[47]]);
        Ok(HelloMsg {
            kind,
            gid: b[8..24].try_into().expect("16 bytes"),
            qpn: u32_at(24),
            psn: u32_at(28),
            slot_size: u32_at(32),
            recv_slots: u32_at(36),
            max_frame: u32_at(40),
            generation: u16::from_be_bytes([b[44], b[45]]),
            reason: (kind == HelloKind::Reject).then(|| RejectReason::from_code(reason)),
            lid: u16::from_be_bytes([b[48], b[49]]),
        })
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Fewer bytes than a message.
    #[error("handshake message truncated ({0} bytes)")]
    Truncated(usize),
    /// Not an rdmq peer.
    #[error("bad handshake magic {0:?}")]
    BadMagic([u8; 4]),
    /// A peer speaking another version.
    #[error("unsupported handshake version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// Unknown message kind.
    #[error("unknown handshake message kind {0}")]
    UnknownKind(u8),
    /// A message arrived out of order.
    #[error("unexpected {got:?} while waiting for {expected}")]
    Unexpected {
        /// What came.
        got: HelloKind,
        /// What was awaited.
        expected: &'static str,
    },
    /// Parameters out of range or incompatible.
    #[error("incompatible parameters: {0}")]
    Incompatible(String),
    /// The server refused RDMA.
    #[error("server refused RDMA: {0:?}")]
    Rejected(RejectReason),
    /// The peer closed the socket during the handshake.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

/// Checks a peer's parameters against ours: equal slot sizes, sane depths.
pub fn check_params(ours: &HelloMsg, theirs: &HelloMsg) -> Result<(), HandshakeError> {
    let bad = |s: String| Err(HandshakeError::Incompatible(s));
    if theirs.slot_size != ours.slot_size {
        return bad(format!(
            "slot size {} differs from ours ({})",
            theirs.slot_size, ours.slot_size
        ));
    }
    if !(1024..=1 << 20).contains(&theirs.slot_size) {
        return bad(format!(
            "slot size {} outside 1 KiB..1 MiB",
            theirs.slot_size
        ));
    }
    if !(8..=super::imm::MAX_CREDITS).contains(&theirs.recv_slots) {
        return bad(format!(
            "{} receive slots outside 8..={}",
            theirs.recv_slots,
            super::imm::MAX_CREDITS
        ));
    }
    if theirs.max_frame < 64 * 1024 {
        return bad(format!("maximum frame {} below 64 KiB", theirs.max_frame));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> HelloMsg {
        HelloMsg {
            kind: HelloKind::Hello,
            gid: [7; 16],
            qpn: 0x1234,
            psn: 99,
            slot_size: 8192,
            recv_slots: 128,
            max_frame: 16 << 20,
            generation: 3,
            reason: None,
            lid: 0x1234,
        }
    }

    #[test]
    fn round_trips() {
        let h = hello();
        assert_eq!(HelloMsg::decode(&h.encode()), Ok(h));
        let r = HelloMsg::reject(RejectReason::Incompatible);
        assert_eq!(HelloMsg::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn rejects_garbage_with_typed_errors() {
        let mut b = hello().encode();
        assert_eq!(
            HelloMsg::decode(&b[..10]),
            Err(HandshakeError::Truncated(10))
        );
        b[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            HelloMsg::decode(&b),
            Err(HandshakeError::UnsupportedVersion(9))
        );
        let mut b = hello().encode();
        b[0] = b'X';
        assert!(matches!(
            HelloMsg::decode(&b),
            Err(HandshakeError::BadMagic(_))
        ));
        let mut b = hello().encode();
        b[6] = 77;
        assert_eq!(HelloMsg::decode(&b), Err(HandshakeError::UnknownKind(77)));
    }

    #[test]
    fn parameter_checks() {
        let ours = hello();
        assert!(check_params(&ours, &ours).is_ok());
        let other = HelloMsg {
            slot_size: 4096,
            ..ours
        };
        assert!(matches!(
            check_params(&ours, &other),
            Err(HandshakeError::Incompatible(_))
        ));
        let few = HelloMsg {
            recv_slots: 2,
            ..ours
        };
        assert!(check_params(&ours, &few).is_err());
    }
}
