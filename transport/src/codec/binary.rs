//! The ROCKETMQ binary header (serialize type 1), all integers big-endian:
//! code i16 | language u8 | version i16 | opaque i32 | flag i32 | remark (i32 len + UTF-8) |
//! extFields (i32 total len, then { u16 key len, key, i32 value len, value }*).
//! A zero remark or extFields length means absent.

use super::command::{ExtFields, LanguageCode, RemotingCommand, SerializeType};
use super::error::{DecodeError, EncodeError};

/// Appends the binary header of `cmd` to `out`.
pub(crate) fn encode(cmd: &RemotingCommand, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let code = i16::try_from(cmd.code).map_err(|_| EncodeError::CodeOutOfRange(cmd.code))?;
    let version =
        i16::try_from(cmd.version).map_err(|_| EncodeError::VersionOutOfRange(cmd.version))?;
    out.extend_from_slice(&code.to_be_bytes());
    out.push(cmd.language.code());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&cmd.opaque.to_be_bytes());
    out.extend_from_slice(&cmd.flag.to_be_bytes());
    match &cmd.remark {
        Some(r) => {
            out.extend_from_slice(&(r.len() as u32).to_be_bytes());
            out.extend_from_slice(r.as_bytes());
        }
        None => out.extend_from_slice(&0u32.to_be_bytes()),
    }
    let len_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes());
    if let Some(fields) = &cmd.ext_fields {
        for (k, v) in fields.iter() {
            let klen = u16::try_from(k.len()).map_err(|_| EncodeError::KeyTooLong(k.len()))?;
            out.extend_from_slice(&klen.to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }
    let ext_len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&ext_len.to_be_bytes());
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self, n: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8(what))
    }
}

/// Parses a binary header; the body is attached by the caller.
pub(crate) fn decode(header: &[u8]) -> Result<RemotingCommand, DecodeError> {
    let mut r = Reader { buf: header };
    let code = r.u16("code")? as i16 as i32;
    let language = LanguageCode::from_code(r.u8("language")?);
    let version = r.u16("version")? as i16 as i32;
    let opaque = r.u32("opaque")? as i32;
    let flag = r.u32("flag")? as i32;
    let remark_len = r.u32("remark length")? as usize;
    let remark = if remark_len == 0 {
        None
    } else {
        Some(r.str(remark_len, "remark")?.to_owned())
    };
    let ext_len = r.u32("extFields length")? as usize;
    let ext_fields = if ext_len == 0 {
        None
    } else {
        let mut fr = Reader {
            buf: r.take(ext_len, "extFields")?,
        };
        // Keys and values take at most the section's bytes; each pair at least 6 of them.
        let mut fields = ExtFields::with_capacity(ext_len, (ext_len / 6).min(32));
        while !fr.buf.is_empty() {
            let klen = fr.u16("extFields key length")? as usize;
            let key = fr.str(klen, "extFields key")?;
            let vlen = fr.u32("extFields value length")? as usize;
            let value = fr.str(vlen, "extFields value")?;
            fields.push(key, value);
        }
        fields.dedupe();
        Some(fields)
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(r.buf.len()));
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        serialize_type: SerializeType::RocketMq,
        body: bytes::Bytes::new(),
    })
}
