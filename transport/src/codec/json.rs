//! The JSON header (serialize type 0): written in fastjson's dialect, read leniently.
//!
//! fastjson writes bean properties in alphabetical order and omits null values, so a request
//! header looks like
//! `{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"JAVA","opaque":1,"serializeTypeCurrentRPC":"JSON","version":479}`.
//! Readers must accept unknown keys and non-string `extFields` values (ali-ons sends `"d":4`).

use super::command::{ExtFields, LanguageCode, RemotingCommand, SerializeType};
use super::error::DecodeError;

/// Appends the fastjson-style JSON header of `cmd` to `out`.
pub(crate) fn encode(cmd: &RemotingCommand, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"code\":");
    write_int(out, cmd.code as i64);
    if let Some(fields) = &cmd.ext_fields {
        out.extend_from_slice(b",\"extFields\":{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k);
            out.push(b':');
            write_str(out, v);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"flag\":");
    write_int(out, cmd.flag as i64);
    out.extend_from_slice(b",\"language\":\"");
    out.extend_from_slice(cmd.language.name().as_bytes());
    out.extend_from_slice(b"\",\"opaque\":");
    write_int(out, cmd.opaque as i64);
    if let Some(remark) = &cmd.remark {
        out.extend_from_slice(b",\"remark\":");
        write_str(out, remark);
    }
    out.extend_from_slice(b",\"serializeTypeCurrentRPC\":\"");
    out.extend_from_slice(SerializeType::Json.name().as_bytes());
    out.extend_from_slice(b"\",\"version\":");
    write_int(out, cmd.version as i64);
    out.push(b'}');
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Parses a JSON header; the body is attached by the caller.
///
/// A small hand-written parser for this one object shape: UTF-8 is validated once, strings are
/// unescaped straight into their destination, unknown keys (with any value) are skipped, and
/// `extFields` scalars are kept as the text they were written with (`4`, `false`, `-1.5`).
pub(crate) fn decode(header: &[u8]) -> Result<RemotingCommand, DecodeError> {
    let text = std::str::from_utf8(header).map_err(|_| DecodeError::InvalidUtf8("JSON header"))?;
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        i: 0,
    };
    let mut cmd = RemotingCommand {
        code: 0,
        language: LanguageCode::Java,
        version: 0,
        opaque: 0,
        flag: 0,
        remark: None,
        ext_fields: None,
        serialize_type: SerializeType::Json,
        body: bytes::Bytes::new(),
    };
    let mut have_code = false;
    let mut scratch = String::new();
    p.expect(b'{')?;
    if !p.eat(b'}') {
        loop {
            // Keys are plain ASCII in practice: borrowed from the header, no copy.
            let key = match p.plain_string()? {
                Some(k) => k,
                None => {
                    scratch.clear();
                    p.string_into(&mut scratch)?;
                    scratch.as_str()
                }
            };
            p.expect(b':')?;
            match key {
                "code" => {
                    cmd.code = p.int()?;
                    have_code = true;
                }
                "version" => cmd.version = p.int()?,
                "opaque" => cmd.opaque = p.int()?,
                "flag" => cmd.flag = p.int()?,
                "language" => {
                    if p.null()? {
                        cmd.language = LanguageCode::Java;
                    } else if let Some(name) = p.plain_string()? {
                        cmd.language = LanguageCode::from_name(name);
                    } else {
                        let mut name = String::new();
                        p.string_into(&mut name)?;
                        cmd.language = LanguageCode::from_name(&name);
                    }
                }
                "remark" => {
                    cmd.remark = if p.null()? {
                        None
                    } else {
                        let mut r = String::new();
                        p.string_into(&mut r)?;
                        Some(r)
                    };
                }
                "extFields" => {
                    cmd.ext_fields = if p.null()? { None } else { Some(p.fields()?) };
                }
                _ => p.skip_value(0)?,
            }
            if p.eat(b',') {
                continue;
            }
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the header object"));
    }
    if !have_code {
        return Err(DecodeError::InvalidJson("missing field `code`".into()));
    }
    Ok(cmd)
}

struct Parser<'a> {
    /// The header, already validated as UTF-8.
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &str) -> DecodeError {
        DecodeError::InvalidJson(format!("{what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), DecodeError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(&format!("expected `{}`", c as char)))
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// Consumes `null` if it comes next.
    fn null(&mut self) -> Result<bool, DecodeError> {
        self.ws();
        Ok(self.literal(b"null"))
    }

    /// The next JSON string when it holds no escape, borrowed from the header; `None` (and
    /// nothing consumed) otherwise, for [`Self::string_into`] to unescape or reject.
    fn plain_string(&mut self) -> Result<Option<&'a str>, DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        let start = self.i + 1;
        for (j, &b) in self.s.iter().enumerate().skip(start) {
            match b {
                b'"' => {
                    self.i = j + 1;
                    // Both ends sit on ASCII bytes of validated UTF-8: char boundaries.
                    return Ok(Some(&self.text[start..j]));
                }
                b'\\' => return Ok(None),
                _ if b < 0x20 => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// A JSON string, unescaped and appended to `out`.
    fn string_into(&mut self, out: &mut String) -> Result<(), DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let text = self.s;
        loop {
            let start = self.i;
            while let Some(&b) = text.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // Both ends sit on ASCII bytes of validated UTF-8: char boundaries.
            out.push_str(&self.text[start..self.i]);
            match text.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let esc = *text
                        .get(self.i)
                        .ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.literal(b"\\u") {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(c).ok_or_else(|| self.err("invalid escape"))?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let mut v = 0u32;
        for d in digits {
            v = v * 16
                + (*d as char)
                    .to_digit(16)
                    .ok_or_else(|| self.err("bad \\u escape"))?;
        }
        self.i += 4;
        Ok(v)
    }

    /// The text of a JSON number.
    fn number(&mut self) -> Result<&str, DecodeError> {
        self.ws();
        let start = self.i;
        let s = self.s;
        let digits = |i: &mut usize| {
            let from = *i;
            while s.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        if !digits(&mut self.i) {
            return Err(self.err("expected a number"));
        }
        if s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(&mut self.i) {
                return Err(self.err("expected digits after `.`"));
            }
        }
        if let Some(b'e' | b'E') = s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = s.get(self.i) {
                self.i += 1;
            }
            if !digits(&mut self.i) {
                return Err(self.err("expected an exponent"));
            }
        }
        Ok(std::str::from_utf8(&s[start..self.i]).expect("ASCII"))
    }

    fn int(&mut self) -> Result<i32, DecodeError> {
        let text = self.number()?;
        text.parse::<i32>()
            .map_err(|_| DecodeError::InvalidJson(format!("`{text}` is not a 32-bit integer")))
    }

    /// `extFields`: an object of scalars; nulls are dropped, the rest kept as text.
    fn fields(&mut self) -> Result<ExtFields, DecodeError> {
        let mut f = ExtFields::with_capacity(self.s.len() - self.i, 16);
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Ok(f);
        }
        loop {
            let start = f.buf_mut().len();
            self.string_into(f.buf_mut())?;
            let key_len = f.buf_mut().len() - start;
            self.expect(b':')?;
            let keep = match self.peek() {
                Some(b'"') => {
                    self.string_into(f.buf_mut())?;
                    true
                }
                Some(b'n') if self.literal(b"null") => false,
                Some(b't') if self.literal(b"true") => {
                    f.buf_mut().push_str("true");
                    true
                }
                Some(b'f') if self.literal(b"false") => {
                    f.buf_mut().push_str("false");
                    true
                }
                Some(b'-' | b'0'..=b'9') => {
                    let n = self.number()?;
                    f.buf_mut().push_str(n);
                    true
                }
                _ => {
                    return Err(
                        self.err("extFields values must be strings, numbers, booleans or null")
                    );
                }
            };
            if keep {
                f.commit(start, key_len);
            } else {
                f.rollback(start);
            }
            if self.eat(b',') {
                continue;
            }
            self.expect(b'}')?;
            f.dedupe();
            return Ok(f);
        }
    }

    /// Skips any JSON value (for unknown keys).
    fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > 64 {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            Some(b'"') => match self.plain_string()? {
                Some(_) => Ok(()),
                None => self.string_into(&mut String::new()),
            },
            Some(b'{') => {
                self.i += 1;
                if self.eat(b'}') {
                    return Ok(());
                }
                loop {
                    self.string_into(&mut String::new())?;
                    self.expect(b':')?;
                    self.skip_value(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.expect(b'}');
                }
            }
            Some(b'[') => {
                self.i += 1;
                if self.eat(b']') {
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.expect(b']');
                }
            }
            Some(b't') if self.literal(b"true") => Ok(()),
            Some(b'f') if self.literal(b"false") => Ok(()),
            Some(b'n') if self.literal(b"null") => Ok(()),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            _ => Err(self.err("expected a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_fastjson() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é/");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é/\"".as_bytes());
    }

    #[test]
    fn ints() {
        for v in [0i64, 1, -1, 479, i32::MIN as i64, i32::MAX as i64] {
            let mut out = Vec::new();
            write_int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }
}
