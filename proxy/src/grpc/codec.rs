//! The gRPC codec: prost's, with a wire-level guard in front of decoding. A request whose
//! protobuf holds more than [`MAX_FIELDS`] fields at its top level or inside any of its
//! top-level sub-messages (a `Message` with 100,000 user properties is 100,000 map entries) is
//! refused with `INVALID_ARGUMENT` before anything is allocated for it: decoding such a request
//! costs ~24 ms of CPU on this machine, scanning it well under one.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Most fields a request carries at one level (a message's user properties are capped at 128
/// after decoding; batches hold a few dozen messages).
pub const MAX_FIELDS: usize = 1024;

/// [`tonic_prost::ProstCodec`] with the field-count guard on decoding.
#[derive(Debug, Clone)]
pub struct GuardedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GuardedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for GuardedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GuardedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        GuardedDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// Prost's decoder behind [`too_many_fields`].
#[derive(Debug, Clone)]
pub struct GuardedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for GuardedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        // The message is one contiguous buffer here; were it not, prost alone decides.
        if buf.chunk().len() == buf.remaining()
            && let Some(n) = too_many_fields(buf.chunk(), 1)
        {
            return Err(Status::invalid_argument(format!(
                "request carries {n}+ fields in one message; at most {MAX_FIELDS}"
            )));
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `Some(count)` when the protobuf message `buf`, or (down to `depth` more levels) one of its
/// length-delimited fields read as a message, holds more than [`MAX_FIELDS`] fields. A field
/// that does not parse as a message (a string, a body) is not counted into.
pub fn too_many_fields(buf: &[u8], depth: u32) -> Option<usize> {
    let mut at = 0;
    let mut fields = 0;
    while at < buf.len() {
        let (tag, n) = varint(&buf[at..])?;
        at += n;
        fields += 1;
        if fields > MAX_FIELDS {
            return Some(fields);
        }
        match tag & 7 {
            0 => at += varint(&buf[at..])?.1,
            1 => at += 8,
            5 => at += 4,
            2 => {
                let (len, n) = varint(&buf[at..])?;
                at += n;
                let end = at.checked_add(usize::try_from(len).ok()?)?;
                let sub = buf.get(at..end)?;
                if depth > 0
                    && let Some(n) = too_many_fields(sub, depth - 1)
                {
                    return Some(n);
                }
                at = end;
            }
            _ => return None,
        }
    }
    None
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn request(properties: usize) -> Vec<u8> {
        pb::SendMessageRequest {
            messages: vec![pb::Message {
                user_properties: (0..properties)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect(),
                // A body that looks like thousands of fields is a body, not a message.
                body: bytes::Bytes::from([0x08u8, 0x01].repeat(5000)),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_hundred_thousand_properties_are_caught_and_normal_requests_pass() {
        assert_eq!(too_many_fields(&request(128), 1), None);
        assert_eq!(too_many_fields(&request(1000), 1), None);
        assert!(too_many_fields(&request(100_000), 1).is_some());
    }
}
