//! Emulated QKD module pairs.
//!
//! The transmitter module (at the link's `tx` end) produces random key blocks at the link's
//! secret key rate and sends them to the receiver module (at the `rx` end, inside the peer KM
//! process) over the *emulated quantum channel*: an HTTPS exchange on the KMA port, mutual
//! TLS. Real modules distil identical keys at both ends from quantum signals; here the bits
//! travel over loopback TLS, which only the emulation does.
//!
//! Both ends store every block exactly once under the same number:
//! 1. the receiver stores a frame as *pending* and answers;
//! 2. the transmitter then stores the frame as usable;
//! 3. the next frame (or an empty one) carries `commit_upto`, and the receiver makes its
//!    pending blocks usable.
//!
//! After any error or restart the two ends [`resync`](super::sink::KeySink::resync): each
//! drops what the other does not have. A block is usable at one end only once both ends have
//! it, so nothing either end hands out is missing at the other.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;
use zeroize::{Zeroize, Zeroizing};

use super::sink::{Block, KeySink, SinkError, BLOCK_BYTES, RX, TX};
use super::{LinkCondition, LinkState, QkdModule, SignalReport};

/// Interval between frames of the emulated quantum channel.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(200);
/// Most blocks in one frame.
pub const MAX_BLOCKS_PER_FRAME: usize = 4096;
/// How often an idle transmitter checks that its peer still answers.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an end may hear nothing from the other before it reports loss of signal.
pub const LOSS_OF_SIGNAL_AFTER: Duration = Duration::from_secs(5);
/// How long an end waits for the other to answer a first time before it reports loss of
/// signal (the two KMs of a link start one after the other).
pub const FIRST_SIGNAL_WITHIN: Duration = Duration::from_secs(15);

/// Whether an end that last heard the other at `heard` (`ever`: at least once) still has
/// its signal.
pub fn signal_present(heard: tokio::time::Instant, ever: bool) -> bool {
    heard.elapsed()
        < if ever {
            LOSS_OF_SIGNAL_AFTER
        } else {
            FIRST_SIGNAL_WITHIN
        }
}

/// Start of a session on the emulated quantum channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The transmitter's next block number.
    pub next_seq: u64,
    /// The session this sync opens (increasing: nanoseconds since the Unix epoch). The
    /// receiver refuses a sync older than its current session, so a sync delayed in the
    /// network cannot roll back blocks confirmed since.
    #[serde(default)]
    pub epoch: u64,
}

/// The receiver's answer: the block number both ends continue from.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    pub agreed_next_seq: u64,
}

/// A frame of key blocks on the emulated quantum channel.
#[derive(Serialize, Deserialize)]
pub struct Frame {
    /// Number of the first block in `blocks`.
    pub first_seq: u64,
    /// Concatenated blocks, Base64.
    pub blocks: String,
    /// Blocks numbered below this are stored at the transmitter: the receiver may use them.
    pub commit_upto: u64,
    /// The session the frame belongs to (see [`SyncRequest::epoch`]).
    #[serde(default)]
    pub epoch: u64,
    /// How many of the frame's blocks, from the first, the transmitter end owns; the others
    /// are the receiver end's (see [`super::sink`]).
    pub tx_owned: usize,
}

/// How many of `count` new blocks go to the transmitter end when it holds `tx_held` blocks
/// and the receiver end `rx_held`: the end holding fewer gets them until both hold the same,
/// then they are shared. A flow that drains one end's blocks so gets the whole key rate.
pub fn tx_share(count: usize, tx_held: usize, rx_held: usize) -> usize {
    let balanced = (count + rx_held).saturating_sub(tx_held) / 2;
    balanced.min(count)
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.blocks.zeroize();
    }
}

/// Splits a frame's Base64 payload into blocks.
pub fn decode_blocks(encoded: &str) -> Option<Vec<Block>> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
    );
    if bytes.len() % BLOCK_BYTES != 0 || bytes.len() / BLOCK_BYTES > MAX_BLOCKS_PER_FRAME {
        return None;
    }
    Some(
        bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|chunk| {
                let mut block = Zeroizing::new([0u8; BLOCK_BYTES]);
                block.copy_from_slice(chunk);
                block
            })
            .collect(),
    )
}

fn encode_blocks(blocks: &[Block]) -> String {
    let mut bytes = Zeroizing::new(Vec::with_capacity(blocks.len() * BLOCK_BYTES));
    for block in blocks {
        bytes.extend_from_slice(&block[..]);
    }
    base64::engine::general_purpose::STANDARD.encode(&bytes[..])
}

/// Receiver side of a sync: agree on the block number to continue from.
pub fn receive_sync(
    sink: &dyn KeySink,
    link: &str,
    request: &SyncRequest,
) -> Result<u64, SinkError> {
    sink.resync(link, request.next_seq)
}

/// Receiver side of a frame: confirm what the transmitter stored, keep the new blocks pending.
pub fn receive_frame(sink: &dyn KeySink, link: &str, frame: &Frame) -> Result<u64, ReceiveError> {
    let blocks = decode_blocks(&frame.blocks).ok_or(ReceiveError::Malformed)?;
    let next = frame
        .first_seq
        .checked_add(blocks.len() as u64)
        .ok_or(ReceiveError::Malformed)?;
    if frame.commit_upto > frame.first_seq || frame.tx_owned > blocks.len() {
        return Err(ReceiveError::Malformed);
    }
    // every frame, empty or not, continues the sequence (checked by the sink): a stale or
    // forged frame cannot confirm blocks the transmitter never stored
    sink.receive_frame(
        link,
        frame.first_seq,
        frame.commit_upto,
        &blocks,
        frame.tx_owned,
    )?;
    Ok(next)
}

/// Why the receiver refused a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("malformed frame")]
    Malformed,
    #[error("frame of an old session")]
    OldSession,
    #[error(transparent)]
    Store(#[from] SinkError),
}

/// The transmitter module of an emulated link.
pub struct EmulatedTransmitter {
    /// Link id.
    pub link: String,
    /// Base URL of the peer KM's KMA server (`https://host:port`).
    pub peer_kma: String,
    /// HTTPS client with this KM's identity.
    pub client: reqwest::Client,
}

impl QkdModule for EmulatedTransmitter {
    fn link_id(&self) -> &str {
        &self.link
    }

    fn start(
        self: Box<Self>,
        sink: Arc<dyn KeySink>,
        control: watch::Receiver<LinkCondition>,
        signal: SignalReport,
    ) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("qkd_module", link = %self.link, end = "tx");
        tokio::spawn(self.run(sink, control, signal).instrument(span))
    }
}

enum Session {
    /// Both ends agree up to this block number; nothing unconfirmed.
    Synced {
        next_seq: u64,
        unconfirmed: bool,
        epoch: u64,
    },
    NeedsSync,
}

impl EmulatedTransmitter {
    fn url(&self, what: &str) -> String {
        format!("{}/qchannel/v1/links/{}/{}", self.peer_kma, self.link, what)
    }

    async fn run(
        self,
        sink: Arc<dyn KeySink>,
        control: watch::Receiver<LinkCondition>,
        signal: SignalReport,
    ) {
        let mut session = Session::NeedsSync;
        let mut bits_owed = 0.0f64;
        let mut ticker = tokio::time::interval(FRAME_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        // the last exchange the peer answered (even with a refusal), and what was reported
        let mut heard = last;
        let mut ever = false;
        let mut present = true;
        loop {
            ticker.tick().await;
            if (heard.elapsed() >= HEARTBEAT_INTERVAL || !ever) && self.heartbeat().await {
                heard = tokio::time::Instant::now();
                ever = true;
            }
            if present != signal_present(heard, ever) {
                present = !present;
                tracing::warn!(present, "signal from the peer module");
                signal(present);
            }
            let now = tokio::time::Instant::now();
            let elapsed = now.duration_since(last).as_secs_f64();
            last = now;
            let condition = *control.borrow();
            if condition.state != LinkState::Up {
                bits_owed = 0.0;
            } else {
                bits_owed += condition.rate_bps * elapsed;
            }
            session = match self
                .step(&sink, session, &mut bits_owed, condition.capacity_blocks)
                .await
            {
                Ok(next) => next,
                Err(error) => {
                    tracing::debug!(%error, "quantum channel interrupted; resyncing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Session::NeedsSync
                }
            };
        }
    }

    async fn step(
        &self,
        sink: &Arc<dyn KeySink>,
        session: Session,
        bits_owed: &mut f64,
        capacity_blocks: usize,
    ) -> Result<Session, TransmitError> {
        let (next_seq, unconfirmed, epoch) = match session {
            Session::Synced {
                next_seq,
                unconfirmed,
                epoch,
            } => (next_seq, unconfirmed, epoch),
            Session::NeedsSync => {
                let (next_seq, epoch) = self.sync(sink).await?;
                (next_seq, false, epoch)
            }
        };
        let link = self.link.clone();
        let (tx_held, rx_held) = blocking(sink, move |s| {
            Ok((s.stored(&link, TX)?, s.stored(&link, RX)?))
        })
        .await?;
        // a full pool pauses generation, like a real module whose key buffer is full
        let room = capacity_blocks.saturating_sub(tx_held + rx_held);
        let due = (*bits_owed / (BLOCK_BYTES * 8) as f64).floor() as usize;
        let count = due.min(room).min(MAX_BLOCKS_PER_FRAME);
        *bits_owed -= (due * BLOCK_BYTES * 8) as f64; // a full buffer discards, as real modules do
        if count == 0 && !unconfirmed {
            return Ok(Session::Synced {
                next_seq,
                unconfirmed: false,
                epoch,
            });
        }
        let blocks: Vec<Block> = (0..count)
            .map(|_| {
                let mut block = Zeroizing::new([0u8; BLOCK_BYTES]);
                rand::rngs::OsRng.fill_bytes(&mut block[..]);
                block
            })
            .collect();
        let tx_owned = tx_share(count, tx_held, rx_held);
        let frame = Frame {
            first_seq: next_seq,
            blocks: encode_blocks(&blocks),
            commit_upto: next_seq,
            epoch,
            tx_owned,
        };
        let response = self
            .client
            .post(self.url("frames"))
            .json(&frame)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(TransmitError::Refused(response.status().as_u16()));
        }
        if !blocks.is_empty() {
            let link = self.link.clone();
            blocking(sink, move |s| {
                s.store_blocks(&link, next_seq, &blocks, tx_owned)
            })
            .await?;
        }
        Ok(Session::Synced {
            next_seq: next_seq + count as u64,
            unconfirmed: count > 0,
            epoch,
        })
    }

    /// Whether the peer module answers at all.
    async fn heartbeat(&self) -> bool {
        self.client
            .post(self.url("heartbeat"))
            .timeout(HEARTBEAT_INTERVAL * 2)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn sync(&self, sink: &Arc<dyn KeySink>) -> Result<(u64, u64), TransmitError> {
        let link = self.link.clone();
        let own_next = blocking(sink, move |s| s.next_seq(&link)).await?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let response = self
            .client
            .post(self.url("sync"))
            .json(&SyncRequest {
                next_seq: own_next,
                epoch,
            })
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(TransmitError::Refused(response.status().as_u16()));
        }
        let agreed = response.json::<SyncResponse>().await?.agreed_next_seq;
        let link = self.link.clone();
        let next = blocking(sink, move |s| s.resync(&link, agreed)).await?;
        tracing::info!(link = %self.link, next_seq = next, "quantum channel synchronised");
        Ok((next, epoch))
    }
}

/// Runs a blocking operation of the sink off the async executor.
async fn blocking<T: Send + 'static>(
    sink: &Arc<dyn KeySink>,
    f: impl FnOnce(&dyn KeySink) -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    let sink = sink.clone();
    tokio::task::spawn_blocking(move || f(&*sink))
        .await
        .map_err(|e| SinkError(format!("store task: {e}").into()))?
}

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    #[error("peer unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("peer refused with HTTP {0}")]
    Refused(u16),
    #[error(transparent)]
    Store(#[from] SinkError),
}

#[cfg(test)]
mod tests {
    use super::tx_share;
    use proptest::prelude::*;

    #[test]
    fn new_blocks_go_to_the_end_holding_fewer() {
        assert_eq!(tx_share(10, 0, 0), 5);
        assert_eq!(tx_share(10, 0, 2048), 10);
        assert_eq!(tx_share(10, 2048, 0), 0);
        assert_eq!(tx_share(10, 4, 8), 7);
    }

    proptest! {
        #[test]
        fn shares_never_exceed_the_frame_and_narrow_the_gap(count in 0usize..5000, tx in 0usize..5000, rx in 0usize..5000) {
            let share = tx_share(count, tx, rx);
            prop_assert!(share <= count);
            let (tx2, rx2) = (tx + share, rx + count - share);
            prop_assert!(tx2.abs_diff(rx2) <= tx.abs_diff(rx).max(1));
        }
    }
}
