//! Internal DNS: the responder (pure) and its UDP and TCP servers (one of each per shard).

use crate::shard::ShardCtx;
use std::rc::Rc;

/// Serves DNS over UDP on this shard's socket until the process stops.
pub async fn serve_udp(ctx: Rc<ShardCtx>, sock: glommio::net::UdpSocket) {
    let _ = (ctx, sock);
}

/// Serves DNS over TCP on this shard's listener until the process stops.
pub async fn serve_tcp(ctx: Rc<ShardCtx>, listener: glommio::net::TcpListener) {
    let _ = (ctx, listener);
}
