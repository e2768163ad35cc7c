//! Serving the API with a bounded graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::router;
use crate::node::Node;

/// Serves the API of `node` on `listener` until `shutdown` completes; then stops accepting,
/// gives requests in flight up to the configured grace period to finish, and makes every audit
/// record durable. A request that was answered was applied in full: every write the API does is
/// one atomic store batch before its reply is sent.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&node)).into_make_service_with_connect_info::<SocketAddr>();
    let background = tokio::spawn(Arc::clone(&node).background());
    let (stop, mut server) = match node.tls() {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(listener.into_std()?, tls.clone())?.handle(handle.clone());
            (Stop::Tls(handle), tokio::spawn(server.serve(app)))
        }
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            (Stop::Plain(tx), tokio::spawn(async move { server.await }))
        }
    };
    shutdown.await;
    let grace = Duration::from_secs(node.config().api.shutdown_grace_secs);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    match stop {
        Stop::Tls(handle) => handle.graceful_shutdown(Some(grace)),
        Stop::Plain(tx) => {
            let _ = tx.send(());
        }
    }
    match tokio::time::timeout(grace + Duration::from_millis(500), &mut server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "the server task failed"),
        Err(_) => {
            server.abort();
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "requests still in flight after the grace period were dropped"
            );
        }
    }
    background.abort();
    tokio::task::spawn_blocking(move || node.close())
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    tracing::info!("audit log flushed; stopped");
    Ok(())
}

/// How the server is told to stop.
enum Stop {
    Tls(axum_server::Handle<SocketAddr>),
    Plain(tokio::sync::oneshot::Sender<()>),
}
