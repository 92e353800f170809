//! TLS: `tls-handshake` (a new TCP connection and a full handshake per operation; resumption
//! is off unless `--resume`) and `tls-bulk` (one handshake per stream, then writes of
//! `--size` bytes as fast as the target takes them).

use super::{backoff, connect, io_kind, watched, within};
use crate::cli::Tls;
use crate::run::ShardCtx;
use crate::stats::{Done, ErrorKind};
use futures_lite::AsyncWriteExt;
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

pub struct TlsPlan {
    pub target: SocketAddr,
    pub bulk: bool,
    pub size: usize,
    sni: ServerName<'static>,
    connector: TlsConnector,
    insecure: bool,
    resume: bool,
}

impl TlsPlan {
    pub fn new(c: &Tls, target: SocketAddr, bulk: bool) -> Result<TlsPlan, String> {
        let config = crate::tls::client_config(c.insecure, c.ca.as_ref(), c.resume)?;
        let sni =
            ServerName::try_from(c.sni.clone()).map_err(|e| format!("--sni {:?}: {e}", c.sni))?;
        Ok(TlsPlan {
            target,
            bulk,
            size: c.size,
            sni,
            connector: TlsConnector::from(config),
            insecure: c.insecure,
            resume: c.resume,
        })
    }

    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "sni": self.sni.to_str(),
            "insecure": self.insecure,
            "resumption": self.resume,
            "size": if self.bulk { Some(self.size) } else { None },
            "provider": "aws-lc-rs",
        })
    }

    async fn handshake(&self, ctx: &ShardCtx) -> Result<TlsStream<TcpStream>, ErrorKind> {
        let tcp = connect(self.target, ctx.timeout).await?;
        within(ctx.timeout, async {
            self.connector
                .connect(self.sni.clone(), tcp)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => "tls-handshake",
                    _ => io_kind(e),
                })
        })
        .await
    }
}

pub async fn worker(ctx: &ShardCtx, p: &TlsPlan) {
    let watch = ctx.watch();
    let chunk: Vec<u8> = (0..p.size).map(|i| (i % 251) as u8).collect();
    let mut stream: Option<TlsStream<TcpStream>> = None;
    while let Some(due) = ctx.next().await {
        if !p.bulk {
            let r = p.handshake(ctx).await;
            let failed_connect = matches!(r, Err(k) if k.starts_with("connect"));
            ctx.record(due, r.map(|_| Done::bytes(0)));
            if failed_connect {
                backoff(ctx).await;
            }
            continue;
        }
        if stream.is_none() {
            match p.handshake(ctx).await {
                Ok(s) => stream = Some(s),
                Err(kind) => {
                    ctx.record(due, Err(kind));
                    backoff(ctx).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let fd = s.get_ref().0.as_raw_fd();
        let r = watched(&watch, fd, ctx.timeout, async {
            s.write_all(&chunk).await.map_err(io_kind)?;
            s.flush().await.map_err(io_kind)
        })
        .await;
        if r.is_err() {
            stream = None;
        }
        ctx.record(due, r.map(|_| Done::bytes(p.size as u64)));
    }
}
