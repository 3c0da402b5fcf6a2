//! The dashboard's browser logins: one-time login tokens, issued to a caller of the REST API
//! (an orchestrator, `qkdni ctl dashboard`, the demo), each exchanged once for a session
//! cookie; and the sessions those cookies name.
//!
//! Tokens and session ids are 256-bit random values (base64url), kept only in this
//! process's memory: a restarted controller forgets them, and the browser logs in again.
//! They are compared in constant time, and never logged. Both kinds are bounded in number
//! (the oldest gives way) and expire: an unused token after [`TOKEN_LIFETIME`], a session
//! after [`SESSION_LIFETIME`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use crate::problem::constant_eq;

/// How long an unused one-time token stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// How long a browser session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most tokens and sessions held at once (each kind).
const MOST: usize = 64;

/// A secret and when it stops being valid.
struct Secret {
    value: String,
    expires: Instant,
}

/// Live secrets of one kind, oldest first.
#[derive(Default)]
struct Secrets(Vec<Secret>);

impl Secrets {
    fn add(&mut self, lifetime: Duration) -> String {
        let now = Instant::now();
        self.0.retain(|s| s.expires > now);
        if self.0.len() == MOST {
            self.0.remove(0);
        }
        let value = random();
        self.0.push(Secret {
            value: value.clone(),
            expires: now + lifetime,
        });
        value
    }

    /// The index of the live secret equal to `value` (every entry compared, in constant
    /// time each).
    fn find(&self, value: &str) -> Option<usize> {
        let now = Instant::now();
        let mut found = None;
        for (i, s) in self.0.iter().enumerate() {
            if constant_eq(&s.value, value) && s.expires > now {
                found = Some(i);
            }
        }
        found
    }
}

/// 256 random bits, base64url without padding (43 characters).
fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One-time tokens and browser sessions of one controller.
#[derive(Default)]
pub struct Logins {
    tokens: Mutex<Secrets>,
    sessions: Mutex<Secrets>,
}

impl Logins {
    /// A new one-time login token.
    pub fn issue_token(&self) -> String {
        self.tokens.lock().expect("tokens").add(TOKEN_LIFETIME)
    }

    /// Exchanges a one-time token for a new session id; `None` if the token is unknown,
    /// expired or already used.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().expect("tokens");
        let index = tokens.find(token)?;
        tokens.0.remove(index);
        drop(tokens);
        Some(
            self.sessions
                .lock()
                .expect("sessions")
                .add(SESSION_LIFETIME),
        )
    }

    /// Whether `session` names a live browser session.
    pub fn session_valid(&self, session: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions")
            .find(session)
            .is_some()
    }

    /// Ends a browser session.
    pub fn end_session(&self, session: &str) {
        let mut sessions = self.sessions.lock().expect("sessions");
        if let Some(index) = sessions.find(session) {
            sessions.0.remove(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_logs_in_once() {
        let logins = Logins::default();
        let token = logins.issue_token();
        assert_eq!(token.len(), 43);
        assert!(logins.redeem("forged").is_none());
        let session = logins.redeem(&token).expect("first use");
        assert!(logins.redeem(&token).is_none(), "second use");
        assert!(logins.session_valid(&session));
        assert!(!logins.session_valid(&token));
        logins.end_session(&session);
        assert!(!logins.session_valid(&session));
    }

    #[test]
    fn old_tokens_give_way() {
        let logins = Logins::default();
        let first = logins.issue_token();
        for _ in 0..MOST {
            logins.issue_token();
        }
        assert!(logins.redeem(&first).is_none());
        assert_eq!(logins.tokens.lock().unwrap().0.len(), MOST);
    }
}
