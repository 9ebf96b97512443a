//! The RocketMQ remoting codec: [`RemotingCommand`], its JSON and binary header encodings, and
//! framing. Pure functions over byte buffers; no I/O.

mod binary;
mod command;
mod error;
mod frame;
mod json;
mod oversize;

pub use command::{
    ExtFields, FLAG_ONEWAY, FLAG_RESPONSE, LanguageCode, RDMQ_VERSION, RemotingCommand,
    SerializeType,
};
pub use error::{DecodeError, EncodeError};
pub use frame::{DEFAULT_MAX_FRAME, EncodedCommand, FRAME_PREFIX_LEN, FrameSplitter, FrameWrite};
pub use oversize::{DEFAULT_MAX_HEADER, OversizedHeader, peek_oversized};
