//! Criterion micro-benchmarks of the remoting codec: encoding a send-like request into a buffer
//! and decoding it back, with JSON and binary headers.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rdmq_bench::transport::send_like_request;
use rdmq_transport::codec::{FrameSplitter, RemotingCommand, SerializeType};

fn codec(c: &mut Criterion) {
    for ser in [SerializeType::Json, SerializeType::RocketMq] {
        for size in [128usize, 1024, 4096] {
            let cmd = send_like_request(size).with_serialize_type(ser);
            let mut group = c.benchmark_group(format!("codec/{}/{size}B", ser.name()));
            group.throughput(Throughput::Elements(1));
            let mut scratch = Vec::with_capacity(512);
            let mut out = Vec::with_capacity(size + 1024);
            group.bench_function("encode", |b| {
                b.iter(|| {
                    out.clear();
                    let enc = cmd.encode_with(&mut scratch, usize::MAX).unwrap();
                    enc.write_to(&mut out);
                    std::hint::black_box(out.len())
                })
            });
            let frame = Bytes::from(cmd.encode_to_vec().unwrap());
            group.bench_function("decode", |b| {
                b.iter(|| {
                    RemotingCommand::decode_frame(std::hint::black_box(frame.clone())).unwrap()
                })
            });
            let splitter = FrameSplitter::default();
            group.bench_function("split+decode", |b| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&frame[..]);
                    splitter.decode(&mut buf).unwrap().unwrap()
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
