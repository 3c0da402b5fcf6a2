//! The dashboard's live stream (server-sent events): on connect, the recent events and a
//! full snapshot; then each controller event as it is recorded (`event`), and a new snapshot
//! (`snapshot`) whenever the picture changed: the instance publishes a view after every
//! input, so a link reported down reaches the page as soon as the agent's notification is
//! handled. Snapshots go out at most every [`MIN_GAP`] per client (a burst of inputs costs
//! one), and the peers' abstract topologies, which change outside the view, are looked at
//! every [`PEER_CHECK`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::super::controller::{Controller, ControllerEvent};
use super::snapshot::Snapshot;

/// Least time between two snapshots sent to one client.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How often the peers' abstract topologies are compared with what the client has.
const PEER_CHECK: Duration = Duration::from_millis(500);
/// Recent events sent on connect.
const BACKLOG: usize = 100;

/// The stream of one dashboard client.
pub fn stream(
    controller: Arc<Controller>,
    client: String,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let span = tracing::info_span!("dashboard-stream", %client);
    tokio::spawn(feed(controller, tx).instrument(span));
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn json_event(name: &str, value: &impl serde::Serialize) -> Option<Event> {
    match Event::default().event(name).json_data(value) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::warn!(%error, name, "dashboard event not serialized");
            None
        }
    }
}

/// Feeds one client until it goes away or the controller stops.
async fn feed(controller: Arc<Controller>, tx: mpsc::Sender<Event>) {
    tracing::debug!("dashboard client connected");
    let mut views = controller.view_changes();
    let mut events = controller.subscribe_events();
    let send = |event: Option<Event>| {
        let tx = tx.clone();
        async move {
            match event {
                Some(event) => tx.send(event).await.is_ok(),
                None => true,
            }
        }
    };
    let mut sent = Snapshot::of(&controller);
    let recent: Vec<ControllerEvent> = {
        let all = controller.events();
        all[all.len().saturating_sub(BACKLOG)..].to_vec()
    };
    if !send(json_event("events", &recent)).await || !send(json_event("snapshot", &sent)).await {
        return;
    }
    let mut last_sent = tokio::time::Instant::now();
    let mut peer_check = tokio::time::interval(PEER_CHECK);
    loop {
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if !send(json_event("event", &event)).await {
                        break;
                    }
                    // an event often comes with a change outside the view (peer topology)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "dashboard client missed events: sending them again");
                    if !send(json_event("events", &controller.events())).await {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = peer_check.tick() => {}
            _ = tx.closed() => break,
        }
        tokio::time::sleep_until(last_sent + MIN_GAP).await;
        let now = Snapshot::of(&controller);
        if now != sent {
            if !send(json_event("snapshot", &now)).await {
                break;
            }
            sent = now;
            last_sent = tokio::time::Instant::now();
        }
    }
    tracing::debug!("dashboard client gone");
}
