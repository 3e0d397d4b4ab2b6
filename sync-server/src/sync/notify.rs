//! Waking long polls across replicas: PostgreSQL LISTEN/NOTIFY.
//!
//! Whoever writes an inbox event runs `SELECT pg_notify('tollgate_inbox', agent_id)` in the same
//! transaction ([`NOTIFY_SQL`]); PostgreSQL delivers it at commit to every replica's listening
//! connection, which wakes the long polls of that agent. A notification is only a hint: a waiter
//! re-reads the inbox after waking, and also re-checks every [`RECHECK_INTERVAL`] in case the
//! listening connection was down when a notification was sent (it reconnects with backoff).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

/// The channel name.
pub const CHANNEL: &str = "tollgate_inbox";
const LISTEN_SQL: &str = "LISTEN tollgate_inbox";
/// Run in the transaction that writes an agent's inbox event; `$1` is the agent id (uuid).
pub const NOTIFY_SQL: &str = "SELECT pg_notify('tollgate_inbox', $1::uuid::text)";
/// A waiter's safety net against a missed notification.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Notifications buffered for slow waiters; one that falls behind re-reads its inbox.
const BUFFER: usize = 1024;
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// A handle to subscribe to inbox wake-ups.
#[derive(Debug, Clone)]
pub struct InboxNotifier {
    sender: broadcast::Sender<Uuid>,
}

impl InboxNotifier {
    /// Starts the listening connection (and its reconnect loop) in the background. Fails only if
    /// the URL cannot be parsed; a database that is down is retried.
    pub async fn start(database_url: &str) -> anyhow::Result<InboxNotifier> {
        let config: tokio_postgres::Config = database_url
            .parse()
            .map_err(|e| anyhow::anyhow!("the database URL is not valid ({e})"))?;
        let (sender, _) = broadcast::channel(BUFFER);
        let notifier = InboxNotifier { sender };
        tokio::spawn(listen_forever(config, notifier.sender.clone()));
        Ok(notifier)
    }

    /// A notifier that is never woken by the database (tests of code that only writes).
    pub fn detached() -> InboxNotifier {
        let (sender, _) = broadcast::channel(BUFFER);
        InboxNotifier { sender }
    }

    /// Subscribes to wake-ups; filter by agent id with [`Waiter::wait_for`].
    pub fn subscribe(&self) -> Waiter {
        Waiter {
            receiver: self.sender.subscribe(),
        }
    }
}

/// One long poll's subscription.
#[derive(Debug)]
pub struct Waiter {
    receiver: broadcast::Receiver<Uuid>,
}

impl Waiter {
    /// Returns when `agent_id`'s inbox may have grown, after [`RECHECK_INTERVAL`], or when
    /// `deadline` passes, whichever is first. The caller re-reads the inbox in every case.
    pub async fn wait_for(&mut self, agent_id: Uuid, deadline: tokio::time::Instant) {
        let recheck = tokio::time::Instant::now() + RECHECK_INTERVAL;
        let until = recheck.min(deadline);
        loop {
            match tokio::time::timeout_at(until, self.receiver.recv()).await {
                Err(_) => return,                                          // timed out
                Ok(Ok(id)) if id == agent_id => return,                    // ours
                Ok(Ok(_)) => continue,                                     // another agent's
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return, // may have missed ours
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }
}

async fn listen_forever(config: tokio_postgres::Config, sender: broadcast::Sender<Uuid>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &sender).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "inbox LISTEN connection failed; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Runs one listening connection until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    sender: &broadcast::Sender<Uuid>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    {
        let listen = client.batch_execute(LISTEN_SQL);
        tokio::pin!(listen);
        // Drive the connection while LISTEN runs.
        loop {
            tokio::select! {
                done = &mut listen => { done?; break; }
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        }
    }
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message?
            && let Ok(id) = n.payload().parse::<Uuid>()
        {
            // No receivers is fine: nobody is waiting.
            let _ = sender.send(id);
        }
    }
    drop(client);
    Ok(())
}
