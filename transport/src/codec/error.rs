//! Typed errors of the remoting codec.

/// Why a frame could not be decoded. Any of these closes the connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is smaller than the 4-byte header-length word it must cover.
    #[error("frame length {0} is smaller than the minimum of 4")]
    BadLength(u32),
    /// The frame is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Declared frame length (including the length prefix).
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The header length points past the end of the frame.
    #[error("header length {header_len} exceeds the {available} bytes left in the frame")]
    HeaderTooLong {
        /// Declared header length.
        header_len: usize,
        /// Bytes available after the header-length word.
        available: usize,
    },
    /// The serialize-type byte is neither JSON (0) nor ROCKETMQ (1).
    #[error("unknown header serialize type {0}")]
    UnknownSerializeType(u8),
    /// The JSON header could not be parsed.
    #[error("invalid JSON header: {0}")]
    InvalidJson(String),
    /// A header string is not valid UTF-8.
    #[error("header contains invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// The binary header ends before a field it announces.
    #[error("binary header truncated while reading {0}")]
    Truncated(&'static str),
    /// The binary header has bytes left over after its last field.
    #[error("binary header has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The connection ended inside a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    UnexpectedEof(usize),
}

/// Why a command could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The binary header stores the code as 16 bits; larger codes (the Pop family) need JSON.
    #[error("code {0} does not fit the 16-bit field of the ROCKETMQ binary header; use JSON")]
    CodeOutOfRange(i32),
    /// The binary header stores the version as 16 bits.
    #[error("version {0} does not fit the 16-bit field of the ROCKETMQ binary header")]
    VersionOutOfRange(i32),
    /// A binary header key is longer than its 16-bit length field allows.
    #[error("header field name of {0} bytes is too long for the binary header")]
    KeyTooLong(usize),
    /// The header is longer than the 24-bit header-length field allows.
    #[error("header of {0} bytes exceeds the 24-bit length field")]
    HeaderTooLong(usize),
    /// The whole frame would exceed the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Encoded frame length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}
