//! The `RemotingCommand` value: one request or response of RocketMQ's remoting protocol.

use bytes::Bytes;

/// Header bit 0 of `flag`: set on responses (`RPC_TYPE`).
pub const FLAG_RESPONSE: i32 = 1;
/// Header bit 1 of `flag`: set on one-way requests, which get no response (`RPC_ONEWAY`).
pub const FLAG_ONEWAY: i32 = 1 << 1;

/// How a command's header is serialized (the high byte of the frame's second word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SerializeType {
    /// fastjson-compatible JSON (type 0), what Java and every known client use by default.
    #[default]
    Json,
    /// The compact big-endian `ROCKETMQ` binary layout (type 1).
    RocketMq,
}

impl SerializeType {
    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            SerializeType::Json => 0,
            SerializeType::RocketMq => 1,
        }
    }

    /// Parses the wire byte.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(SerializeType::Json),
            1 => Some(SerializeType::RocketMq),
            _ => None,
        }
    }

    /// The name fastjson writes for `serializeTypeCurrentRPC`.
    pub fn name(self) -> &'static str {
        match self {
            SerializeType::Json => "JSON",
            SerializeType::RocketMq => "ROCKETMQ",
        }
    }
}

/// The client implementation language (`LanguageCode`), written by name in JSON and as a byte in
/// the binary header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(missing_docs)]
pub enum LanguageCode {
    #[default]
    Java,
    Cpp,
    DotNet,
    Python,
    Delphi,
    Erlang,
    Ruby,
    Other,
    Http,
    Go,
    Php,
    Oms,
    Rust,
    NodeJs,
}

const LANGUAGES: [(LanguageCode, &str); 14] = [
    (LanguageCode::Java, "JAVA"),
    (LanguageCode::Cpp, "CPP"),
    (LanguageCode::DotNet, "DOTNET"),
    (LanguageCode::Python, "PYTHON"),
    (LanguageCode::Delphi, "DELPHI"),
    (LanguageCode::Erlang, "ERLANG"),
    (LanguageCode::Ruby, "RUBY"),
    (LanguageCode::Other, "OTHER"),
    (LanguageCode::Http, "HTTP"),
    (LanguageCode::Go, "GO"),
    (LanguageCode::Php, "PHP"),
    (LanguageCode::Oms, "OMS"),
    (LanguageCode::Rust, "RUST"),
    (LanguageCode::NodeJs, "NODE_JS"),
];

impl LanguageCode {
    /// The byte used by the binary header (the Java enum's code).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parses the binary byte; unknown values map to [`LanguageCode::Other`].
    pub fn from_code(code: u8) -> Self {
        LANGUAGES
            .get(code as usize)
            .map(|(l, _)| *l)
            .unwrap_or(LanguageCode::Other)
    }

    /// The enum name used by the JSON header.
    pub fn name(self) -> &'static str {
        LANGUAGES[self as usize].1
    }

    /// Parses the JSON name; unknown names map to [`LanguageCode::Other`] (clients are free-form).
    pub fn from_name(name: &str) -> Self {
        LANGUAGES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(l, _)| *l)
            .unwrap_or(LanguageCode::Other)
    }
}

/// The per-command "custom header" fields, flattened to string pairs, in insertion order.
///
/// Headers carry a dozen or so fields: all keys and values live in one string buffer with
/// index ranges beside it (two allocations per header, not two per field), and lookups are
/// linear scans.
#[derive(Clone, Default)]
pub struct ExtFields {
    buf: String,
    /// (key start, key end, value start, value end) in `buf`.
    spans: Vec<(u32, u32, u32, u32)>,
}

impl ExtFields {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `bytes` of keys and values and `fields` pairs.
    pub fn with_capacity(bytes: usize, fields: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            spans: Vec::with_capacity(fields),
        }
    }

    fn key_bytes(&self, span: &(u32, u32, u32, u32)) -> &[u8] {
        &self.buf.as_bytes()[span.0 as usize..span.1 as usize]
    }

    fn key(&self, span: &(u32, u32, u32, u32)) -> &str {
        &self.buf[span.0 as usize..span.1 as usize]
    }

    fn value(&self, span: &(u32, u32, u32, u32)) -> &str {
        &self.buf[span.2 as usize..span.3 as usize]
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.spans
            .iter()
            .position(|s| self.key_bytes(s) == key.as_bytes())
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let vs = self.buf.len() as u32;
        match self.position(key) {
            Some(i) => {
                self.buf.push_str(value);
                let ve = self.buf.len() as u32;
                self.spans[i].2 = vs;
                self.spans[i].3 = ve;
            }
            None => {
                self.buf.push_str(key);
                let ke = self.buf.len() as u32;
                self.buf.push_str(value);
                let ve = self.buf.len() as u32;
                self.spans.push((vs, ke, ke, ve));
            }
        }
    }

    /// Decoder support: the buffer to append a key and then its value to.
    pub(crate) fn buf_mut(&mut self) -> &mut String {
        &mut self.buf
    }

    /// Decoder support: the key starts at `start` and is `key_len` bytes; the value is
    /// everything after it. Repeated keys are resolved by [`Self::dedupe`] once all are in.
    pub(crate) fn commit(&mut self, start: usize, key_len: usize) {
        self.spans.push((
            start as u32,
            (start + key_len) as u32,
            (start + key_len) as u32,
            self.buf.len() as u32,
        ));
    }

    /// Decoder support: appends `key` and `value` (see [`Self::dedupe`]).
    pub(crate) fn push(&mut self, key: &str, value: &str) {
        let start = self.buf.len();
        self.buf.push_str(key);
        self.buf.push_str(value);
        self.commit(start, key.len());
    }

    /// Decoder support: a repeated key keeps its first position and takes its last value.
    /// Linear in the number of fields (a hash set beyond a few dozen), so a header with
    /// very many keys costs no more than its size.
    pub(crate) fn dedupe(&mut self) {
        const SMALL: usize = 24;
        let n = self.spans.len();
        let bytes = self.buf.as_bytes();
        let key = |s: &(u32, u32, u32, u32)| &bytes[s.0 as usize..s.1 as usize];
        if n <= SMALL {
            let dup = (1..n).any(|i| (0..i).any(|j| key(&self.spans[j]) == key(&self.spans[i])));
            if !dup {
                return;
            }
        }
        let mut first: std::collections::HashMap<&[u8], usize> =
            std::collections::HashMap::with_capacity(n);
        let mut kept: Vec<(u32, u32, u32, u32)> = Vec::with_capacity(n);
        for s in &self.spans {
            match first.get(key(s)) {
                Some(&i) => {
                    kept[i].2 = s.2;
                    kept[i].3 = s.3;
                }
                None => {
                    first.insert(key(s), kept.len());
                    kept.push(*s);
                }
            }
        }
        drop(first);
        self.spans = kept;
    }

    /// Decoder support: drops what was appended since `start`.
    pub(crate) fn rollback(&mut self, start: usize) {
        self.buf.truncate(start);
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.spans
            .iter()
            .find(|s| self.key_bytes(s) == key.as_bytes())
            .map(|s| self.value(s))
    }

    /// Removes and returns the value of `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.position(key)?;
        let span = self.spans.remove(i);
        Some(self.value(&span).to_owned())
    }

    /// Iterates over the pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans.iter().map(|s| (self.key(s), self.value(s)))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl PartialEq for ExtFields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ExtFields {}

impl std::fmt::Debug for ExtFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        // Pushed, then repeats resolved once (first position, last value — what `insert`
        // would give), so building from many pairs stays linear.
        let mut f = ExtFields::new();
        for (k, v) in iter {
            f.push(k.as_ref(), v.as_ref());
        }
        f.dedupe();
        f
    }
}

/// One remoting request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    /// Request code, or response code in a response.
    pub code: i32,
    /// Sender's language.
    pub language: LanguageCode,
    /// Sender's protocol version (MQVersion ordinal).
    pub version: i32,
    /// Request id, echoed by the response. 0 is a valid id.
    pub opaque: i32,
    /// Bit field: [`FLAG_RESPONSE`], [`FLAG_ONEWAY`].
    pub flag: i32,
    /// Free text, typically an error description.
    pub remark: Option<String>,
    /// Command-specific header fields (`None` is written as absent, not as an empty map).
    pub ext_fields: Option<ExtFields>,
    /// Header encoding used on the wire.
    pub serialize_type: SerializeType,
    /// The body; a slice of the receive buffer on decode.
    pub body: Bytes,
}

/// The protocol version rdmq announces: RocketMQ V5_3_3.
pub const RDMQ_VERSION: i32 = 479;

impl RemotingCommand {
    /// A new request with `code`, no fields and no body.
    pub fn request(code: i32) -> Self {
        Self {
            code,
            language: LanguageCode::Rust,
            version: RDMQ_VERSION,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: None,
            serialize_type: SerializeType::Json,
            body: Bytes::new(),
        }
    }

    /// A new response with `code` and an optional remark.
    pub fn response(code: i32, remark: Option<String>) -> Self {
        Self {
            flag: FLAG_RESPONSE,
            remark,
            ..Self::request(code)
        }
    }

    /// Builder: sets one header field.
    pub fn with_field(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.ext_fields
            .get_or_insert_with(ExtFields::new)
            .insert(key, value);
        self
    }

    /// Builder: sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Builder: sets the header encoding.
    pub fn with_serialize_type(mut self, ser: SerializeType) -> Self {
        self.serialize_type = ser;
        self
    }

    /// True for responses.
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// True for one-way requests.
    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    /// Marks the command as a one-way request.
    pub fn mark_oneway(&mut self) {
        self.flag |= FLAG_ONEWAY;
    }

    /// Marks the command as a response.
    pub fn mark_response(&mut self) {
        self.flag |= FLAG_RESPONSE;
    }

    /// A header field, if present.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.ext_fields.as_ref().and_then(|f| f.get(key))
    }
}
