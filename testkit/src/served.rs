//! A service's `run(config, listener, shutdown)` served in this process: the write and read
//! regions both start this way.

use std::{future::Future, net::SocketAddr};

use crate::Channel;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::connect;

/// A service running in this process with configuration `C`, its run ending in `E` on failure.
pub struct Served<C, E> {
    pub config: C,
    /// The address it listens on (the port picked when the configuration said 0).
    pub addr: SocketAddr,
    pub channel: Channel,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), E>>,
}

impl<C: Clone, E: Send + 'static> Served<C, E> {
    /// Binds `listen_addr`, spawns `run` on it and connects, waiting (bounded) until it serves.
    pub(crate) async fn serve<F>(
        config: C,
        listen_addr: SocketAddr,
        run: impl FnOnce(C, TcpListener, CancellationToken) -> F,
    ) -> anyhow::Result<Self>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let listener = TcpListener::bind(listen_addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config.clone(), listener, shutdown.clone()));
        let channel = connect(addr).await?;
        Ok(Self {
            config,
            addr,
            channel,
            shutdown,
            task,
        })
    }

    /// Asks the service to stop; the handle says how it ended.
    pub(crate) fn shut_down(self) -> JoinHandle<Result<(), E>> {
        self.shutdown.cancel();
        self.task
    }
}
