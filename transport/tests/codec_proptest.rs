//! Property tests: arbitrary commands round-trip through both header encodings, whole or split
//! at arbitrary points; arbitrary bytes never panic the decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rdmq_transport::codec::{
    ExtFields, FrameSplitter, LanguageCode, RemotingCommand, SerializeType,
};

fn language() -> impl Strategy<Value = LanguageCode> {
    (0u8..14).prop_map(LanguageCode::from_code)
}

fn command() -> impl Strategy<Value = RemotingCommand> {
    (
        any::<i16>(),
        language(),
        any::<i16>(),
        any::<i32>(),
        0i32..4,
        proptest::option::of("\\PC{0,40}"),
        proptest::option::of(proptest::collection::vec(
            ("[a-zA-Z]{1,12}", "\\PC{0,30}"),
            0..8,
        )),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(
            |(code, language, version, opaque, flag, remark, fields, binary, body)| {
                let ext_fields = fields.map(|f| f.into_iter().collect::<ExtFields>());
                RemotingCommand {
                    code: code as i32,
                    language,
                    version: version as i32,
                    opaque,
                    flag,
                    remark,
                    ext_fields,
                    serialize_type: if binary {
                        SerializeType::RocketMq
                    } else {
                        SerializeType::Json
                    },
                    body: Bytes::from(body),
                }
            },
        )
}

/// The binary header cannot tell an empty string or map from an absent one.
fn normalized(mut c: RemotingCommand) -> RemotingCommand {
    if c.serialize_type == SerializeType::RocketMq {
        if c.remark.as_deref() == Some("") {
            c.remark = None;
        }
        if c.ext_fields.as_ref().is_some_and(|f| f.is_empty()) {
            c.ext_fields = None;
        }
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trips(cmd in command()) {
        let bytes = cmd.encode_to_vec().unwrap();
        let decoded = RemotingCommand::decode_frame(Bytes::from(bytes)).unwrap();
        prop_assert_eq!(decoded, normalized(cmd));
    }

    #[test]
    fn round_trips_across_split_reads(cmds in proptest::collection::vec(command(), 1..6), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let mut stream = Vec::new();
        for c in &cmds {
            stream.extend(c.encode_to_vec().unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort();
        let splitter = FrameSplitter::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&stream[at..p]);
            at = p;
            while let Some(c) = splitter.decode(&mut buf).unwrap() {
                out.push(c);
            }
        }
        prop_assert_eq!(out, cmds.into_iter().map(normalized).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let splitter = FrameSplitter::new(4096);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = splitter.decode(&mut buf) {}
        let _ = RemotingCommand::decode_frame(Bytes::from(data));
    }
}
