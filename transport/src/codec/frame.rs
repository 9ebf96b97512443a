//! Frame layout: `u32 BE total_len` | `u32 BE (serialize type << 24 | header len)` | header |
//! body, where `total_len` counts everything after itself.

use bytes::{Buf, Bytes, BytesMut};

use super::command::{RemotingCommand, SerializeType};
use super::error::{DecodeError, EncodeError};
use super::{binary, json};

/// Default maximum frame size, length prefix included (RocketMQ's `frameMaxLength`).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes before the header: the length prefix and the serialize-type/header-length word.
pub const FRAME_PREFIX_LEN: usize = 8;

/// A destination for one encoded frame: a plain vector, or a transport's send buffer (for RDMA,
/// registered memory), so the frame is written once, in place.
pub trait FrameWrite {
    /// Appends `src`.
    fn put_slice(&mut self, src: &[u8]);

    /// Appends a payload chunk. Backends that can send it without copying (a TCP vectored write)
    /// keep the `Bytes`; the default copies.
    fn put_bytes(&mut self, src: Bytes) {
        self.put_slice(&src);
    }
}

impl FrameWrite for Vec<u8> {
    fn put_slice(&mut self, src: &[u8]) {
        self.extend_from_slice(src);
    }
}

impl FrameWrite for BytesMut {
    fn put_slice(&mut self, src: &[u8]) {
        self.extend_from_slice(src);
    }
}

/// A command whose header is serialized and whose frame length is known, ready to be written
/// into a buffer of exactly [`EncodedCommand::frame_len`] bytes.
#[derive(Debug)]
pub struct EncodedCommand<'a> {
    header: &'a [u8],
    ser: SerializeType,
    body: &'a Bytes,
}

impl EncodedCommand<'_> {
    /// Total frame length, length prefix included.
    pub fn frame_len(&self) -> usize {
        FRAME_PREFIX_LEN + self.header.len() + self.body.len()
    }

    /// Body length.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Writes the whole frame.
    pub fn write_to<W: FrameWrite + ?Sized>(&self, out: &mut W) {
        let total = (self.frame_len() - 4) as u32;
        let word = ((self.ser.code() as u32) << 24) | self.header.len() as u32;
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        prefix[..4].copy_from_slice(&total.to_be_bytes());
        prefix[4..].copy_from_slice(&word.to_be_bytes());
        out.put_slice(&prefix);
        out.put_slice(self.header);
        if !self.body.is_empty() {
            out.put_bytes(self.body.clone());
        }
    }
}

impl RemotingCommand {
    /// Serializes the header into `scratch` (cleared first) and checks the frame against
    /// `max_frame`. Write the frame with [`EncodedCommand::write_to`].
    pub fn encode_with<'a>(
        &'a self,
        scratch: &'a mut Vec<u8>,
        max_frame: usize,
    ) -> Result<EncodedCommand<'a>, EncodeError> {
        scratch.clear();
        match self.serialize_type {
            SerializeType::Json => json::encode(self, scratch),
            SerializeType::RocketMq => binary::encode(self, scratch)?,
        }
        if scratch.len() > 0x00FF_FFFF {
            return Err(EncodeError::HeaderTooLong(scratch.len()));
        }
        let enc = EncodedCommand {
            header: scratch,
            ser: self.serialize_type,
            body: &self.body,
        };
        if enc.frame_len() > max_frame {
            return Err(EncodeError::Oversize {
                len: enc.frame_len(),
                max: max_frame,
            });
        }
        Ok(enc)
    }

    /// Encodes the whole frame into a new vector (tests, tools; transports use
    /// [`RemotingCommand::encode_with`]).
    pub fn encode_to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut scratch = Vec::new();
        let enc = self.encode_with(&mut scratch, usize::MAX)?;
        let mut out = Vec::with_capacity(enc.frame_len());
        enc.write_to(&mut out);
        Ok(out)
    }

    /// Decodes one complete frame (length prefix included). The body is a slice of `frame`.
    pub fn decode_frame(mut frame: Bytes) -> Result<RemotingCommand, DecodeError> {
        if frame.len() < FRAME_PREFIX_LEN {
            return Err(DecodeError::Truncated("frame prefix"));
        }
        let total = frame.get_u32() as usize;
        if total < 4 {
            return Err(DecodeError::BadLength(total as u32));
        }
        if total != frame.len() {
            return Err(DecodeError::Truncated("frame"));
        }
        let word = frame.get_u32();
        let ser_code = (word >> 24) as u8;
        let header_len = (word & 0x00FF_FFFF) as usize;
        if header_len > frame.len() {
            return Err(DecodeError::HeaderTooLong {
                header_len,
                available: frame.len(),
            });
        }
        let ser = SerializeType::from_code(ser_code)
            .ok_or(DecodeError::UnknownSerializeType(ser_code))?;
        let header = frame.split_to(header_len);
        let mut cmd = match ser {
            SerializeType::Json => json::decode(&header)?,
            SerializeType::RocketMq => binary::decode(&header)?,
        };
        cmd.body = frame;
        Ok(cmd)
    }
}

/// Cuts complete frames out of a byte stream, across partial reads.
#[derive(Debug, Clone)]
pub struct FrameSplitter {
    max_frame: usize,
}

impl FrameSplitter {
    /// A splitter rejecting frames larger than `max_frame` (length prefix included).
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The configured maximum.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Removes and returns the next complete frame from `buf`, or `None` if more bytes are
    /// needed (in which case `buf` has been reserved for the rest of the frame). Oversize and
    /// impossible lengths are reported as soon as the length prefix has arrived.
    pub fn split(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if total < 4 {
            return Err(DecodeError::BadLength(total));
        }
        let frame_len = total as u64 + 4;
        if frame_len > self.max_frame as u64 {
            return Err(DecodeError::Oversize {
                len: frame_len,
                max: self.max_frame,
            });
        }
        let frame_len = frame_len as usize;
        if buf.len() < frame_len {
            buf.reserve(frame_len - buf.len());
            return Ok(None);
        }
        Ok(Some(buf.split_to(frame_len).freeze()))
    }

    /// Splits and decodes the next command.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<RemotingCommand>, DecodeError> {
        match self.split(buf)? {
            Some(frame) => RemotingCommand::decode_frame(frame).map(Some),
            None => Ok(None),
        }
    }
}

impl Default for FrameSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}
