//! Fuzzes the remoting decoder: arbitrary bytes fed to the streaming splitter in two pieces must
//! never panic, and every frame that decodes must re-encode to a frame that decodes the same.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rdmq_transport::codec::{FrameSplitter, RemotingCommand};

fuzz_target!(|data: &[u8]| {
    // What a connection looks at before decoding: the oversized-header scan.
    let _ = rdmq_transport::codec::peek_oversized(&Bytes::copy_from_slice(data), 64);
    let cut = data
        .first()
        .map(|b| *b as usize % (data.len() + 1))
        .unwrap_or(0);
    let splitter = FrameSplitter::new(1 << 20);
    let mut buf = BytesMut::from(&data[..cut]);
    let mut fed_rest = false;
    loop {
        match splitter.decode(&mut buf) {
            Ok(Some(cmd)) => {
                if let Ok(bytes) = cmd.encode_to_vec() {
                    let again = RemotingCommand::decode_frame(Bytes::from(bytes))
                        .expect("re-encoded frame decodes");
                    assert_eq!(again.code, cmd.code);
                    assert_eq!(again.opaque, cmd.opaque);
                    assert_eq!(again.body, cmd.body);
                }
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&data[cut..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
