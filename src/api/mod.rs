//! The registration API (plain HTTP/1.1) served by the API shard.

use crate::registry::Registry;
use crate::shard::ShardCtx;
use std::cell::RefCell;
use std::rc::Rc;

/// Serves the registration API until the process stops.
pub async fn serve(
    ctx: Rc<ShardCtx>,
    listener: glommio::net::TcpListener,
    registry: Rc<RefCell<Registry>>,
) {
    let _ = (ctx, listener, registry);
}

/// Once a second: notes backends that missed their heartbeat, deletes those past the grace
/// period, and republishes when that changed the registry.
pub async fn sweeper(ctx: Rc<ShardCtx>, registry: Rc<RefCell<Registry>>) {
    let _ = ctx;
    loop {
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
        let now = crate::clock::now_ms();
        let mut reg = registry.borrow_mut();
        let sweep = reg.sweep(now);
        for id in &sweep.expired {
            log::warn!("backend {id} missed its heartbeat: no longer served");
        }
        for id in &sweep.removed {
            log::info!("backend {id} removed after the expiry grace period");
        }
        reg.publish_if_dirty();
    }
}
