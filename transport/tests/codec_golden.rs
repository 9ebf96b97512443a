//! Golden byte tests: frames built by hand from the protocol description, compared byte for byte
//! with what the codec writes and checked field by field after decoding.

use bytes::{Bytes, BytesMut};
use rdmq_transport::codec::{
    DecodeError, EncodeError, FrameSplitter, LanguageCode, RemotingCommand, SerializeType,
};

fn frame(ser: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(((ser as u32) << 24) | header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

#[test]
fn json_request_matches_fastjson_bytes() {
    let header = br#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"JAVA","opaque":1,"serializeTypeCurrentRPC":"JSON","version":479}"#;
    let mut cmd = RemotingCommand::request(105).with_field("topic", "TopicTest");
    cmd.language = LanguageCode::Java;
    cmd.opaque = 1;
    let expected = frame(0, header, b"");
    assert_eq!(cmd.encode_to_vec().unwrap(), expected);
    // Prefix: total length 4 + 131, type 0, header length 131.
    assert_eq!(&expected[..8], &[0, 0, 0, 135, 0, 0, 0, 131]);
    let decoded = RemotingCommand::decode_frame(Bytes::from(expected)).unwrap();
    assert_eq!(decoded, cmd);
}

#[test]
fn json_response_with_remark_and_body() {
    let header = br#"{"code":17,"flag":1,"language":"RUST","opaque":0,"remark":"topic \"x\" not exist\n","serializeTypeCurrentRPC":"JSON","version":479}"#;
    let mut cmd = RemotingCommand::response(17, Some("topic \"x\" not exist\n".into()));
    cmd.body = Bytes::from_static(b"\x00\x01body");
    let expected = frame(0, header, b"\x00\x01body");
    assert_eq!(cmd.encode_to_vec().unwrap(), expected);
    let decoded = RemotingCommand::decode_frame(Bytes::from(expected)).unwrap();
    assert!(decoded.is_response());
    assert_eq!(decoded.opaque, 0, "opaque 0 is a valid id");
    assert_eq!(decoded, cmd);
}

#[test]
fn json_input_is_lenient() {
    // ali-ons style: one-letter keys with JSON-typed values, unknown top-level keys, nulls.
    let header = br#"{"code":310,"language":"JAVA","version":121,"opaque":3,"flag":0,"remark":null,"unknownKey":[1,{"a":2}],"extFields":{"a":"PG","b":"T","d":4,"k":false,"f":-1.5,"z":null},"serializeTypeCurrentRPC":"JSON"}"#;
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(0, header, b"hello"))).unwrap();
    assert_eq!(cmd.code, 310);
    assert_eq!(cmd.version, 121);
    assert_eq!(cmd.opaque, 3);
    assert_eq!(cmd.remark, None);
    assert_eq!(cmd.field("a"), Some("PG"));
    assert_eq!(cmd.field("d"), Some("4"));
    assert_eq!(cmd.field("k"), Some("false"));
    assert_eq!(cmd.field("f"), Some("-1.5"));
    assert_eq!(cmd.field("z"), None);
    assert_eq!(&cmd.body[..], b"hello");
    // Unknown language names are accepted.
    let header = br#"{"code":1,"language":"COBOL"}"#;
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(0, header, b""))).unwrap();
    assert_eq!(cmd.language, LanguageCode::Other);
}

#[test]
fn binary_header_matches_hand_built_bytes() {
    #[rustfmt::skip]
    let header: &[u8] = &[
        0x00, 0x0A,             // code 10
        0x0C,                   // language RUST
        0x01, 0xDA,             // version 474
        0x00, 0x00, 0x00, 0x07, // opaque 7
        0x00, 0x00, 0x00, 0x01, // flag: response
        0x00, 0x00, 0x00, 0x02, b'o', b'k', // remark "ok"
        0x00, 0x00, 0x00, 0x10, // extFields: 16 bytes
        0x00, 0x01, b'a', 0x00, 0x00, 0x00, 0x01, b'b',
        0x00, 0x01, b'c', 0x00, 0x00, 0x00, 0x01, b'd',
    ];
    let mut cmd = RemotingCommand::response(10, Some("ok".into()))
        .with_field("a", "b")
        .with_field("c", "d")
        .with_serialize_type(SerializeType::RocketMq);
    cmd.version = 474;
    cmd.opaque = 7;
    let expected = frame(1, header, b"xyz");
    cmd.body = Bytes::from_static(b"xyz");
    assert_eq!(cmd.encode_to_vec().unwrap(), expected);
    let decoded = RemotingCommand::decode_frame(Bytes::from(expected)).unwrap();
    assert_eq!(decoded, cmd);
}

#[test]
fn binary_absent_remark_and_fields_are_zero_lengths() {
    #[rustfmt::skip]
    let header: &[u8] = &[
        0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(1, header, b""))).unwrap();
    assert_eq!(cmd.code, -1);
    assert_eq!(cmd.language, LanguageCode::Java);
    assert!(cmd.is_oneway());
    assert_eq!((cmd.remark, cmd.ext_fields), (None, None));
}

#[test]
fn binary_cannot_carry_pop_codes() {
    let cmd = RemotingCommand::request(200050).with_serialize_type(SerializeType::RocketMq);
    assert_eq!(
        cmd.encode_to_vec(),
        Err(EncodeError::CodeOutOfRange(200050))
    );
}

#[test]
fn malformed_frames_get_typed_errors() {
    let decode = |v: Vec<u8>| RemotingCommand::decode_frame(Bytes::from(v)).unwrap_err();
    // Header length beyond the frame.
    let mut v = frame(0, b"{}", b"");
    v[7] = 200;
    assert!(matches!(
        decode(v),
        DecodeError::HeaderTooLong {
            header_len: 200,
            ..
        }
    ));
    // Unknown serialize type.
    assert_eq!(
        decode(frame(7, b"{}", b"")),
        DecodeError::UnknownSerializeType(7)
    );
    // Invalid JSON, and JSON that is not UTF-8.
    assert!(matches!(
        decode(frame(0, b"{\"code\":", b"")),
        DecodeError::InvalidJson(_)
    ));
    assert!(matches!(
        decode(frame(0, b"{\"code\":1,\"remark\":\"\xff\"}", b"")),
        DecodeError::InvalidUtf8(_)
    ));
    // Missing required code.
    assert!(matches!(
        decode(frame(0, b"{\"opaque\":1}", b"")),
        DecodeError::InvalidJson(_)
    ));
    // Binary header truncated, invalid UTF-8 in a binary remark, trailing bytes.
    assert!(matches!(
        decode(frame(1, &[0, 1, 0], b"")),
        DecodeError::Truncated(_)
    ));
    let mut h = vec![
        0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0, 0,
    ];
    assert_eq!(
        decode(frame(1, &h, b"")),
        DecodeError::InvalidUtf8("remark")
    );
    h[17] = b'x';
    h.push(9);
    assert_eq!(decode(frame(1, &h, b"")), DecodeError::TrailingBytes(1));
    // A length smaller than the header-length word.
    let splitter = FrameSplitter::new(1024);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0][..]);
    assert_eq!(splitter.split(&mut buf), Err(DecodeError::BadLength(3)));
    // Oversize is detected from the prefix alone.
    let mut buf = BytesMut::from(&[0u8, 0, 4, 0][..]);
    assert!(matches!(
        splitter.split(&mut buf),
        Err(DecodeError::Oversize {
            len: 1028,
            max: 1024
        })
    ));
}

#[test]
fn splitter_handles_partial_reads_byte_by_byte() {
    let a = RemotingCommand::request(10)
        .with_field("k", "v")
        .with_body(&b"first"[..]);
    let b = RemotingCommand::response(0, None).with_serialize_type(SerializeType::RocketMq);
    let mut stream = a.encode_to_vec().unwrap();
    stream.extend(b.encode_to_vec().unwrap());
    let splitter = FrameSplitter::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for byte in stream {
        buf.extend_from_slice(&[byte]);
        while let Some(cmd) = splitter.decode(&mut buf).unwrap() {
            out.push(cmd);
        }
    }
    assert_eq!(out, vec![a, b]);
    assert!(buf.is_empty());
}

#[test]
fn decoded_body_borrows_the_read_buffer() {
    let cmd = RemotingCommand::request(10).with_body(vec![7u8; 4096]);
    let mut buf = BytesMut::from(&cmd.encode_to_vec().unwrap()[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let decoded = FrameSplitter::default().decode(&mut buf).unwrap().unwrap();
    let body = decoded.body.as_ptr() as usize;
    assert!(
        body >= start && body + decoded.body.len() <= end,
        "body was copied"
    );
}

#[test]
fn json_escapes_surrogates_and_unknown_nested_values() {
    let header = br#"{"unknown":{"a":[1,2.5e3,{"b":null}],"c":"x\"y"},"code":1,"remark":"tab\tnew\nq\"\u00e9\ud83d\ude00\/","extFields":{"k\u0041":"v\\"},"flag":0}"#;
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(0, header, b""))).unwrap();
    assert_eq!(cmd.remark.as_deref(), Some("tab\tnew\nq\"é😀/"));
    assert_eq!(cmd.field("kA"), Some("v\\"));
    for bad in [
        &br#"{"code":1,"remark":"\ud83d"}"#[..],
        br#"{"code":1,"remark":"\x"}"#,
        br#"{"code":1,"extFields":{"a":[1]}}"#,
        br#"{"code":1.5}"#,
        br#"{"code":1} x"#,
        b"{\"code\":1,\"remark\":\"a\x01b\"}",
    ] {
        let r = RemotingCommand::decode_frame(Bytes::from(frame(0, bad, b"")));
        assert!(
            matches!(r, Err(DecodeError::InvalidJson(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_repeated_field_keeps_its_place_and_takes_the_last_value() {
    // JSON: an escaped key is the same key as its plain spelling.
    let header = br#"{"code":1,"extFields":{"a":"1","b":"2","\u0061":"3","c":"4","b":"5"}}"#;
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(0, header, b""))).unwrap();
    let fields: Vec<_> = cmd.ext_fields.as_ref().unwrap().iter().collect();
    assert_eq!(fields, [("a", "3"), ("b", "5"), ("c", "4")]);
    // Binary: the same rule.
    let mut ext = Vec::new();
    for (k, v) in [("x", "1"), ("y", "2"), ("x", "3")] {
        ext.extend_from_slice(&(k.len() as u16).to_be_bytes());
        ext.extend_from_slice(k.as_bytes());
        ext.extend_from_slice(&(v.len() as u32).to_be_bytes());
        ext.extend_from_slice(v.as_bytes());
    }
    let mut header = vec![0, 1, 13, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0];
    header.extend_from_slice(&(ext.len() as u32).to_be_bytes());
    header.extend_from_slice(&ext);
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(1, &header, b""))).unwrap();
    let fields: Vec<_> = cmd.ext_fields.as_ref().unwrap().iter().collect();
    assert_eq!(fields, [("x", "3"), ("y", "2")]);
}

#[test]
fn a_header_with_a_hundred_thousand_fields_decodes_with_its_repeats_resolved() {
    let n = 100_000;
    let mut header = String::from(r#"{"code":1,"extFields":{"#);
    for i in 0..n {
        header.push_str(&format!(r#""k{i}":"{i}","#));
    }
    header.push_str(r#""k7":"again"}}"#);
    let cmd = RemotingCommand::decode_frame(Bytes::from(frame(0, header.as_bytes(), b""))).unwrap();
    let f = cmd.ext_fields.as_ref().unwrap();
    assert_eq!(f.len(), n);
    assert_eq!(f.get("k7"), Some("again"));
    assert_eq!(f.get("k99999"), Some("99999"));
    assert_eq!(f.iter().nth(7), Some(("k7", "again")));
}
