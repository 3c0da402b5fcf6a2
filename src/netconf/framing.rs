//! NETCONF message framing (RFC 6242): end-of-message (`]]>]]>`, base:1.0, used for the
//! hello exchange) and chunked framing (base:1.1), as a tokio codec for both server and
//! client.
//!
//! Broken framing is an error (the session is closed cleanly); an empty base:1.0 message
//! (as sent by some clients right after their hello) is skipped; messages larger than the
//! configured maximum are rejected before they are buffered whole. A server's sessions
//! share a [`BufferBudget`]: what they hold of messages not yet complete, together, stays
//! within it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The base:1.0 end-of-message marker.
pub const EOM: &[u8] = b"]]>]]>";
/// Largest chunk size allowed by RFC 6242.
pub const MAX_CHUNK: u32 = 4_294_967_295;

/// Which framing is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `]]>]]>` after each message (base:1.0).
    EndOfMessage,
    /// `\n#<len>\n<data>...\n##\n` (base:1.1).
    Chunked,
}

/// Framing errors: the session cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed chunk header")]
    BadChunk,
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("the server's sessions hold {0} bytes of incoming messages already")]
    OverBudget(usize),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes of incoming messages that all sessions of one server may hold at once.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Codec of NETCONF messages (as strings).
#[derive(Debug)]
pub struct NetconfCodec {
    framing: Framing,
    max_message: usize,
    /// Chunked decoding: payload of the message being assembled.
    partial: Vec<u8>,
    /// End-of-message decoding: bytes already searched for the marker.
    scanned: usize,
    /// The budget incoming bytes are charged to, and how much this codec holds of it.
    budget: Option<(Arc<BufferBudget>, usize)>,
}

impl NetconfCodec {
    /// A codec starting with end-of-message framing (for the hello exchange).
    pub fn new(max_message: usize) -> Self {
        Self {
            framing: Framing::EndOfMessage,
            max_message,
            partial: Vec::new(),
            scanned: 0,
            budget: None,
        }
    }

    /// A decoding codec whose buffered input is charged to `budget`.
    pub fn with_budget(max_message: usize, budget: Arc<BufferBudget>) -> Self {
        let mut codec = Self::new(max_message);
        codec.budget = Some((budget, 0));
        codec
    }

    /// Charges (or gives back) what this codec holds after a decoding step: `buffered`
    /// bytes not yet handed out as messages.
    fn account(&mut self, buffered: usize) -> Result<(), FramingError> {
        let Some((budget, held)) = &mut self.budget else {
            return Ok(());
        };
        if buffered > *held {
            if !budget.charge(buffered - *held) {
                return Err(FramingError::OverBudget(budget.used()));
            }
        } else {
            budget.release(*held - buffered);
        }
        *held = buffered;
        Ok(())
    }

    /// Switches framing (after both hellos announced base:1.1).
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
    }

    /// The framing in force.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    fn decode_eom(&mut self, src: &mut BytesMut) -> Result<Option<String>, FramingError> {
        loop {
            // resume the search where the last one stopped (minus a marker's length)
            let from = self.scanned.saturating_sub(EOM.len() - 1).min(src.len());
            let Some(end) = find(&src[from..], EOM).map(|at| from + at) else {
                self.scanned = src.len();
                if src.len() > self.max_message + EOM.len() {
                    return Err(FramingError::TooLarge(self.max_message));
                }
                return Ok(None);
            };
            self.scanned = 0;
            let message = src.split_to(end);
            src.advance(EOM.len());
            if message.len() > self.max_message {
                return Err(FramingError::TooLarge(self.max_message));
            }
            let text = String::from_utf8(message.to_vec()).map_err(|_| FramingError::NotUtf8)?;
            if text.trim().is_empty() {
                continue; // an empty message carries nothing: tolerate it
            }
            return Ok(Some(text));
        }
    }

    fn decode_chunked(&mut self, src: &mut BytesMut) -> Result<Option<String>, FramingError> {
        loop {
            // A chunk header is "\n#<size>\n"; the end of message is "\n##\n".
            if src.len() < 4 {
                return Ok(None);
            }
            if &src[..2] != b"\n#" {
                return Err(FramingError::BadChunk);
            }
            if src[2] == b'#' {
                if src[3] != b'\n' {
                    return Err(FramingError::BadChunk);
                }
                src.advance(4);
                if self.partial.is_empty() {
                    return Err(FramingError::BadChunk); // a message has at least one chunk
                }
                let message = std::mem::take(&mut self.partial);
                return String::from_utf8(message)
                    .map(Some)
                    .map_err(|_| FramingError::NotUtf8);
            }
            // size: 1 to 10 digits, no leading zero
            let digits_end = match src[2..].iter().position(|b| *b == b'\n') {
                Some(pos) => 2 + pos,
                None if src.len() > 13 => return Err(FramingError::BadChunk),
                None => return Ok(None),
            };
            let digits = &src[2..digits_end];
            if digits.is_empty()
                || digits.len() > 10
                || digits[0] == b'0'
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return Err(FramingError::BadChunk);
            }
            let size: u64 = std::str::from_utf8(digits)
                .expect("ascii")
                .parse()
                .map_err(|_| FramingError::BadChunk)?;
            if size > u64::from(MAX_CHUNK) {
                return Err(FramingError::BadChunk);
            }
            let size = size as usize;
            if self.partial.len() + size > self.max_message {
                return Err(FramingError::TooLarge(self.max_message));
            }
            let header = digits_end + 1;
            if src.len() < header + size {
                src.reserve(header + size - src.len());
                return Ok(None);
            }
            src.advance(header);
            self.partial.extend_from_slice(&src[..size]);
            src.advance(size);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Decoder for NetconfCodec {
    type Item = String;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, FramingError> {
        let decoded = match self.framing {
            Framing::EndOfMessage => self.decode_eom(src),
            Framing::Chunked => self.decode_chunked(src),
        }?;
        self.account(src.len() + self.partial.len())?;
        Ok(decoded)
    }
}

impl Drop for NetconfCodec {
    fn drop(&mut self) {
        if let Some((budget, held)) = &self.budget {
            budget.release(*held);
        }
    }
}

impl<T: AsRef<str>> Encoder<T> for NetconfCodec {
    type Error = FramingError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FramingError> {
        let message = item.as_ref().as_bytes();
        match self.framing {
            Framing::EndOfMessage => {
                dst.extend_from_slice(message);
                dst.extend_from_slice(EOM);
            }
            Framing::Chunked => {
                // Never send an empty chunk: an empty message is not sent at all.
                if !message.is_empty() {
                    dst.extend_from_slice(format!("\n#{}\n", message.len()).as_bytes());
                    dst.extend_from_slice(message);
                    dst.extend_from_slice(b"\n##\n");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut NetconfCodec, input: &[u8]) -> Result<Vec<String>, FramingError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(m) = codec.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn end_of_message_framing_skips_empty_messages() {
        let mut codec = NetconfCodec::new(1 << 20);
        let got = decode_all(&mut codec, b"<hello/>]]>]]>\n]]>]]><rpc/>]]>]]><partial").unwrap();
        assert_eq!(got, vec!["<hello/>", "<rpc/>"]);
    }

    #[test]
    fn chunked_framing_joins_chunks() {
        let mut codec = NetconfCodec::new(1 << 20);
        codec.set_framing(Framing::Chunked);
        let got = decode_all(&mut codec, b"\n#4\n<rpc\n#17\n message-id=\"1\"/>\n##\n").unwrap();
        assert_eq!(got, vec!["<rpc message-id=\"1\"/>"]);
    }

    #[test]
    fn broken_chunks_are_errors() {
        for bad in [
            &b"\n#0\nx\n##\n"[..],
            b"\n#abc\n",
            b"garbage",
            b"\n##\n",
            b"\n#01\nx\n##\n",
            b"\n#12345678901\n",
        ] {
            let mut codec = NetconfCodec::new(1 << 20);
            codec.set_framing(Framing::Chunked);
            assert!(
                decode_all(&mut codec, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn oversized_messages_are_rejected_early() {
        let mut codec = NetconfCodec::new(16);
        assert!(matches!(
            decode_all(&mut codec, &[b'a'; 64]),
            Err(FramingError::TooLarge(16))
        ));
        let mut codec = NetconfCodec::new(16);
        codec.set_framing(Framing::Chunked);
        assert!(matches!(
            decode_all(&mut codec, b"\n#100\n"),
            Err(FramingError::TooLarge(16))
        ));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(messages in proptest::collection::vec("[ -~]{1,200}", 1..5), chunked: bool, split in 0usize..400) {
            let mut codec = NetconfCodec::new(1 << 20);
            if chunked { codec.set_framing(Framing::Chunked); }
            let messages: Vec<String> = messages.into_iter().filter(|m| !m.contains("]]>") && !m.trim().is_empty()).collect();
            let mut wire = BytesMut::new();
            for m in &messages { codec.encode(m, &mut wire).unwrap(); }
            // deliver in two pieces at an arbitrary point
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = Vec::new();
            while let Some(m) = codec.decode(&mut buf).unwrap() { got.push(m); }
            buf.extend_from_slice(&wire[split..]);
            while let Some(m) = codec.decode(&mut buf).unwrap() { got.push(m); }
            prop_assert_eq!(got, messages);
        }

        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300), chunked: bool) {
            let mut codec = NetconfCodec::new(1024);
            if chunked { codec.set_framing(Framing::Chunked); }
            let _ = decode_all(&mut codec, &input);
        }
    }

    #[test]
    fn sessions_together_stay_within_their_budget() {
        let budget = BufferBudget::new(100);
        let mut one = NetconfCodec::with_budget(1000, budget.clone());
        let mut two = NetconfCodec::with_budget(1000, budget.clone());
        let mut half = BytesMut::from(&[b'x'; 60][..]);
        assert!(one.decode(&mut half).unwrap().is_none());
        assert_eq!(budget.used(), 60);
        // the second session's 60 bytes would take the total over 100
        let mut more = BytesMut::from(&[b'y'; 60][..]);
        assert!(matches!(
            two.decode(&mut more),
            Err(FramingError::OverBudget(60))
        ));
        // a message completed gives its bytes back; a closed session all it held
        half.extend_from_slice(EOM);
        assert_eq!(one.decode(&mut half).unwrap().unwrap().len(), 60);
        assert_eq!(budget.used(), 0);
        let mut again = BytesMut::from(&[b'z'; 90][..]);
        assert!(two.decode(&mut again).unwrap().is_none());
        assert_eq!(budget.used(), 90);
        drop(two);
        assert_eq!(budget.used(), 0);
    }
}
