//! Fuzzes the NETCONF framing decoder (both framings, arbitrary split points): it must never
//! panic, never return a message longer than the limit, and stop at the first error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qkdni::netconf::framing::{Framing, NetconfCodec};
use tokio_util::codec::Decoder;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut codec = NetconfCodec::new(LIMIT);
    if mode & 1 == 1 {
        codec.set_framing(Framing::Chunked);
    }
    let split = usize::from(mode >> 1).min(rest.len());
    let mut buf = BytesMut::from(&rest[..split]);
    for piece in [&rest[split..], &[][..]] {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => assert!(message.len() <= LIMIT),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        buf.extend_from_slice(piece);
    }
});
