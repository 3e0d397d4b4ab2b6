//! A TCP proxy the test controls, between an agent and the server replicas: it forwards each
//! connection to the first replica that accepts it, and can cut the agent off (a partition) —
//! refusing new connections and severing live ones mid-stream — and heal it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stopped on drop.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    partitioned: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port, forwarding to `targets` (tried in order).
    pub async fn start(targets: Vec<SocketAddr>) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let partitioned = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (partitioned, live) = (partitioned.clone(), live.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if partitioned.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let targets = targets.clone();
                    let task = tokio::spawn(async move {
                        let mut inbound = inbound;
                        for target in targets {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                                return;
                            }
                        }
                    });
                    let mut live = live.lock().unwrap();
                    live.retain(|t| !t.is_finished());
                    live.push(task);
                }
            }
        });
        TcpProxy {
            addr,
            partitioned,
            live,
            accept,
        }
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the link: new connections are closed at once, live ones are severed.
    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Restores the link.
    pub fn heal(&self) {
        self.partitioned.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.partition();
    }
}
