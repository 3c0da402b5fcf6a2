//! Loopback ports for a testbed's services, and the lock that serialises start-ups.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use super::error::{io, TestbedError};

/// Hands out free loopback ports below the kernel's ephemeral range, so that no outgoing
/// connection can take a port between its allocation and the agent's bind. Ports stay bound
/// here until the allocator is dropped (just before the agents start).
pub(super) struct Ports {
    held: Vec<TcpListener>,
    next: u16,
    end: u16,
}

const FIRST_PORT: u16 = 10_000;

impl Ports {
    pub(super) fn new() -> Self {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .unwrap_or(32768);
        let end = ephemeral_low.max(FIRST_PORT + 200);
        let offset = (rand::random::<u32>() % u32::from(end - FIRST_PORT)) as u16;
        Self {
            held: Vec::new(),
            next: FIRST_PORT + offset,
            end,
        }
    }

    pub(super) fn take(&mut self) -> Result<SocketAddr, TestbedError> {
        for _ in 0..(self.end - FIRST_PORT) {
            let port = self.next;
            self.next = if self.next + 1 >= self.end {
                FIRST_PORT
            } else {
                self.next + 1
            };
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                self.held.push(listener);
                return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
        }
        Err(TestbedError::Operation("no free loopback port".into()))
    }
}

/// Serialises testbed start-ups on this machine (port allocation until every agent listens).
pub(super) fn startup_lock() -> Result<std::fs::File, TestbedError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("qkdni-testbed-startup.lock"))
        .map_err(io("opening the start-up lock"))?;
    file.lock().map_err(io("taking the start-up lock"))?;
    Ok(file)
}
