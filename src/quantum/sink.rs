//! Where a QKD module puts the key it makes: a key manager's pools of link key blocks.
//!
//! The quantum layer owns this interface and the key manager's store implements it, so no
//! file of the quantum layer names the key manager. Both ends of a link store every block
//! under the same number; every block belongs to one end ([`TX`] or [`RX`]), as the
//! transmitter module decides when it generates it.

use zeroize::Zeroizing;

/// Size of one link key block in bytes (256 bits: also one Poly1305 one-time key).
pub const BLOCK_BYTES: usize = 32;

/// One link key block, wiped from memory when dropped.
pub type Block = Zeroizing<[u8; BLOCK_BYTES]>;

/// Owner index of blocks owned by the link's transmitter end.
pub const TX: u8 = 0;
/// Owner index of blocks owned by the link's receiver end.
pub const RX: u8 = 1;

/// Why the key sink refused an operation, as the sink tells it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub Box<dyn std::error::Error + Send + Sync>);

/// A key manager's pools, as a QKD module sees them. Every method is one transaction
/// (blocking: modules call it off the async executor).
pub trait KeySink: Send + Sync + 'static {
    /// Number of usable blocks of `link` owned by `owner`, reserved ones included.
    fn stored(&self, link: &str, owner: u8) -> Result<usize, SinkError>;

    /// The next block number expected on `link`.
    fn next_seq(&self, link: &str) -> Result<u64, SinkError>;

    /// Transmitter end: stores `blocks`, numbered from `first_seq`, as usable (the receiver
    /// has them); the first `tx_owned` are the transmitter's.
    fn store_blocks(
        &self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), SinkError>;

    /// Resynchronises `link` with the peer that has generated up to `peer_next`
    /// (exclusive); returns the block number both ends continue from.
    fn resync(&self, link: &str, peer_next: u64) -> Result<u64, SinkError>;

    /// Receiver end, in one transaction: checks that `first_seq` continues the sequence,
    /// makes the pending blocks numbered below `commit_upto` usable, and keeps `blocks`
    /// (the first `tx_owned` the transmitter's) pending until the transmitter confirms them.
    fn receive_frame(
        &self,
        link: &str,
        first_seq: u64,
        commit_upto: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), SinkError>;
}
