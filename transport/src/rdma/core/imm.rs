//! The 32-bit immediate value every message carries:
//!
//! ```text
//!  31 30 | 29 ........ 16 | 15 ........... 0
//!  kind  | credits (14 b) | data: frame sequence (low 16 bits) / control: subtype
//! ```
//!
//! `credits` returns receive slots the sender of this message has re-posted since its last
//! report, so credit updates ride on ordinary traffic.

/// Largest credit count one immediate can carry.
pub const MAX_CREDITS: u32 = (1 << 14) - 1;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole frame.
    Frame,
    /// A chunk of a frame larger than a slot; more follow.
    Chunk,
    /// The last chunk of a frame.
    LastChunk,
    /// A control message (no payload).
    Control(Control),
}

/// Control subtypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Explicit credit return when there is no traffic to carry it.
    CreditUpdate,
    /// Liveness probe on an idle link.
    Keepalive,
    /// The sender will send nothing more (graceful close).
    Goodbye,
    /// An unknown subtype (a protocol error).
    Unknown(u16),
}

/// A decoded immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imm {
    /// Message kind.
    pub kind: Kind,
    /// Credits returned.
    pub credits: u32,
    /// Frame sequence number (low 16 bits) for data; 0 for control.
    pub seq: u16,
}

impl Imm {
    /// Encodes; `credits` must be at most [`MAX_CREDITS`].
    pub fn encode(self) -> u32 {
        debug_assert!(self.credits <= MAX_CREDITS);
        let (kind, low) = match self.kind {
            Kind::Frame => (0u32, self.seq),
            Kind::Chunk => (1, self.seq),
            Kind::LastChunk => (2, self.seq),
            Kind::Control(c) => (
                3,
                match c {
                    Control::CreditUpdate => 1,
                    Control::Keepalive => 2,
                    Control::Goodbye => 3,
                    Control::Unknown(v) => v,
                },
            ),
        };
        (kind << 30) | ((self.credits & MAX_CREDITS) << 16) | low as u32
    }

    /// Decodes any 32-bit value.
    pub fn decode(v: u32) -> Imm {
        let credits = (v >> 16) & MAX_CREDITS;
        let low = (v & 0xFFFF) as u16;
        let (kind, seq) = match v >> 30 {
            0 => (Kind::Frame, low),
            1 => (Kind::Chunk, low),
            2 => (Kind::LastChunk, low),
            _ => (
                Kind::Control(match low {
                    1 => Control::CreditUpdate,
                    2 => Control::Keepalive,
                    3 => Control::Goodbye,
                    other => Control::Unknown(other),
                }),
                0,
            ),
        };
        Imm { kind, credits, seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for kind in [
            Kind::Frame,
            Kind::Chunk,
            Kind::LastChunk,
            Kind::Control(Control::CreditUpdate),
            Kind::Control(Control::Keepalive),
            Kind::Control(Control::Goodbye),
        ] {
            for credits in [0, 1, 255, MAX_CREDITS] {
                let seq = if matches!(kind, Kind::Control(_)) {
                    0
                } else {
                    0xBEEF
                };
                let imm = Imm { kind, credits, seq };
                assert_eq!(Imm::decode(imm.encode()), imm);
            }
        }
        assert_eq!(
            Imm::decode(0xC000_0009).kind,
            Kind::Control(Control::Unknown(9))
        );
    }
}
