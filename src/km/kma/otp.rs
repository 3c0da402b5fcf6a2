//! Information-theoretically secure protection of relayed keys: one-time pad encryption and a
//! Wegman-Carter one-time MAC (Poly1305 keyed with a fresh 256-bit link key block that is
//! used for exactly one message).

use poly1305::universal_hash::KeyInit;
use poly1305::Poly1305;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::km::store::{Block, BLOCK_BYTES};

/// Tag length of the one-time MAC in bytes.
pub const TAG_BYTES: usize = 16;

/// Number of link key blocks needed for one key of `size_bits` bits.
pub fn blocks_per_key(size_bits: u32) -> usize {
    (size_bits as usize).div_ceil(BLOCK_BYTES * 8)
}

/// Concatenates `blocks` and truncates to `size_bits` bits: the key (or pad) they make.
pub fn key_from_blocks(blocks: &[Block], size_bits: u32) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(Vec::with_capacity(blocks.len() * BLOCK_BYTES));
    for block in blocks {
        key.extend_from_slice(&block[..]);
    }
    key.truncate(size_bits as usize / 8);
    key
}

/// One-time pad: `data XOR pad` (the pad must be at least as long as the data).
pub fn xor_pad(data: &[u8], pad: &[u8]) -> Zeroizing<Vec<u8>> {
    assert!(pad.len() >= data.len(), "one-time pad shorter than data");
    Zeroizing::new(data.iter().zip(pad).map(|(d, p)| d ^ p).collect())
}

/// The one-time MAC of `message` under the one-time key `key`.
pub fn tag(key: &Block, message: &[u8]) -> [u8; TAG_BYTES] {
    let mac = Poly1305::new(poly1305::Key::from_slice(&key[..]));
    mac.compute_unpadded(message).into()
}

/// Checks a tag in constant time.
pub fn verify(key: &Block, message: &[u8], expected: &[u8]) -> bool {
    expected.len() == TAG_BYTES && bool::from(tag(key, message).ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(b: u8) -> Block {
        Zeroizing::new([b; BLOCK_BYTES])
    }

    #[test]
    fn key_sizes_round_up_to_blocks() {
        assert_eq!(blocks_per_key(8), 1);
        assert_eq!(blocks_per_key(256), 1);
        assert_eq!(blocks_per_key(264), 2);
        let key = key_from_blocks(&[block(1), block(2)], 264);
        assert_eq!(key.len(), 33);
        assert_eq!(key[32], 2);
    }

    #[test]
    fn tampering_or_another_key_fails_verification() {
        let k = block(9);
        let t = tag(&k, b"relay body");
        assert!(verify(&k, b"relay body", &t));
        assert!(!verify(&k, b"relay bodY", &t));
        assert!(!verify(&block(8), b"relay body", &t));
        assert!(!verify(&k, b"relay body", &t[..15]));
    }

    proptest! {
        #[test]
        fn pad_twice_is_identity(data in proptest::collection::vec(any::<u8>(), 0..128), seed: u8) {
            let pad: Vec<u8> = (0..128u32).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let once = xor_pad(&data, &pad);
            let twice = xor_pad(&once, &pad);
            prop_assert_eq!(twice.as_slice(), data.as_slice());
        }
    }
}
