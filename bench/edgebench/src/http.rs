//! The few bytes of HTTP/1.1 a load generator needs: building requests and finding where one
//! response ends ("is a whole response here?" is pure: [`frame`]). Responses must carry a
//! Content-Length (or have no body); chunked bodies are reported as an error, not guessed at.

use futures_lite::{AsyncRead, AsyncReadExt};

/// Headers larger than this are an error, not a reason to buffer without limit.
pub const MAX_HEAD: usize = 16 * 1024;
/// Bodies larger than this are an error.
pub const MAX_BODY: usize = 16 << 20;

/// A GET on a kept-alive connection (or closed after, with `close`).
pub fn get(path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: edgebench\r\nConnection: {conn}\r\n\r\n").into_bytes()
}

/// A POST with a JSON body on a kept-alive connection.
pub fn post_json(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edgebench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request without a body (DELETE, POST heartbeat).
pub fn bodiless(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: edgebench\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// A complete response at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    pub status: u16,
    /// Where the body starts.
    pub body_at: usize,
    /// Head + body length.
    pub len: usize,
}

/// `Ok(None)` while more bytes are needed; `Err` for a response we cannot frame.
pub fn frame(buf: &[u8]) -> Result<Option<Framed>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err("http-head-too-large")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "http-malformed")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err("http-malformed");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("http-malformed")?;
    let mut len = 0usize;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().map_err(|_| "http-malformed")?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err("http-chunked-unsupported");
        }
    }
    if len > MAX_BODY {
        return Err("http-body-too-large");
    }
    let body_at = head_end + 4;
    Ok((buf.len() >= body_at + len).then_some(Framed {
        status,
        body_at,
        len: body_at + len,
    }))
}

/// Reads one response into `buf` (which may hold bytes of it already) and returns its framing;
/// the caller drains `..len` afterwards.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Framed, &'static str> {
    loop {
        if let Some(f) = frame(buf)? {
            return Ok(f);
        }
        // Read straight into the buffer's spare room (no zeroed bounce buffer per call).
        let old = buf.len();
        buf.resize(old + 8192, 0);
        let r = s.read(&mut buf[old..]).await;
        let n = *r.as_ref().unwrap_or(&0);
        buf.truncate(old + n);
        let n = r.map_err(crate::scenario::io_kind)?;
        if n == 0 {
            return Err("closed");
        }
    }
}

/// The status as a counted tag.
pub fn status_tag(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        404 => "404",
        408 => "408",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_whole_responses_only() {
        let r = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(frame(&r[..20]), Ok(None));
        assert_eq!(frame(&r[..r.len() - 1]), Ok(None));
        let f = frame(r).unwrap().unwrap();
        assert_eq!(f.status, 201);
        assert_eq!(&r[f.body_at..f.len], b"hello");
        // Pipelined bytes after the first response are left alone.
        let mut two = r.to_vec();
        two.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(frame(&two).unwrap().unwrap().len, r.len());
        let nobody = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(frame(nobody).unwrap().unwrap().len, nobody.len());
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err("http-chunked-unsupported")
        );
        assert_eq!(frame(b"SSH-2.0-x\r\n\r\n"), Err("http-malformed"));
        assert_eq!(frame(&vec![b'a'; MAX_HEAD + 1]), Err("http-head-too-large"));
    }

    #[test]
    fn requests() {
        let p = String::from_utf8(post_json("/api/v1/register", "{}")).unwrap();
        assert!(p.starts_with("POST /api/v1/register HTTP/1.1\r\n"));
        assert!(p.ends_with("Content-Length: 2\r\n\r\n{}"));
        assert!(String::from_utf8(get("/", true))
            .unwrap()
            .contains("Connection: close"));
        assert_eq!(status_tag(201), "201");
        assert_eq!(status_tag(418), "4xx");
    }
}
