//! HTTP/1.1 request framing for the API: "is a whole request here?" and "parse it", over a
//! byte buffer the server fills. Pure: no sockets, no clock.
//!
//! Limits are part of the framing: headers over [`MAX_HEADER_BYTES`] are refused with 431, a
//! body over [`MAX_BODY_BYTES`] with 413 (before it is read), a body without `Content-Length`
//! with 411. Requests may be pipelined: [`parse`] reports how many bytes the request used.

/// Most bytes of request line plus headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most bytes of a request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most header lines.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    Other,
}

/// A complete, parsed request borrowing the read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: Method,
    /// The method as sent (for logs and 405 answers).
    pub method_str: &'b str,
    /// The path without the query string.
    pub path: &'b str,
    /// The query string (after `?`, before any `#`; empty when none).
    pub query: &'b str,
    pub content_type: Option<&'b str>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// Whether a `Content-Length` header was present.
    pub has_length: bool,
    pub body: &'b [u8],
    /// `Authorization` header value, if any.
    pub authorization: Option<&'b str>,
}

/// A request the framing refuses; the connection is answered with `status` and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub status: u16,
    pub message: &'static str,
}

/// What the buffer holds.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// Not a whole request yet: read more.
    Partial,
    /// A whole request, and how many bytes of the buffer it used.
    Complete(Request<'b>, usize),
    /// A request that cannot be served: answer and close.
    Error(FrameError),
}

fn error(status: u16, message: &'static str) -> Parsed<'static> {
    Parsed::Error(FrameError { status, message })
}

/// Frames and parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADER_BYTES {
                return error(431, "request headers are larger than 16 KiB");
            }
            return Parsed::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return error(431, "too many request headers (64 at most)")
        }
        Err(_) => return error(400, "malformed HTTP request"),
    };
    if head_len > MAX_HEADER_BYTES {
        return error(431, "request headers are larger than 16 KiB");
    }
    let method_str = req.method.unwrap_or("");
    let method = match method_str {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let version = req.version.unwrap_or(1);
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let query = target
        .split('#')
        .next()
        .and_then(|t| t.split_once('?'))
        .map_or("", |(_, q)| q);

    let mut content_length: Option<usize> = None;
    let mut content_type = None;
    let mut authorization = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let Ok(n) = value.parse::<usize>() else {
                return error(400, "invalid Content-Length");
            };
            if content_length.is_some_and(|prev| prev != n) {
                return error(400, "conflicting Content-Length headers");
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    if chunked {
        // Refusing is allowed (RFC 9112 §6.1 lets a server answer 411); every client we serve
        // sends a length.
        return error(
            411,
            "chunked request bodies are not supported: send Content-Length",
        );
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return error(413, "request body is larger than 64 KiB");
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Parsed::Partial;
    }
    let keep_alive = if version == 0 {
        connection_keep_alive
    } else {
        !connection_close
    };
    Parsed::Complete(
        Request {
            method,
            method_str,
            path,
            query,
            content_type,
            keep_alive,
            has_length: content_length.is_some(),
            body: &buf[head_len..total],
            authorization,
        },
        total,
    )
}

/// The reason phrase of the status codes the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a complete response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf) {
            Parsed::Error(e) => e.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn get_with_query_and_keep_alive() {
        let raw = b"GET /api/v1/backends?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/api/v1/backends");
        assert!(r.keep_alive);
        assert_eq!(n, raw.len());
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn body_and_pipelining() {
        let two = b"POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\n\r\n";
        let (r, n) = complete(two);
        assert_eq!(r.body, b"{}");
        assert_eq!(r.content_type, Some("application/json"));
        assert!(r.has_length);
        let (r2, _) = complete(&two[n..]);
        assert_eq!(r2.path, "/b");
    }

    #[test]
    fn partial_until_whole() {
        let full = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert!(
                matches!(parse(&full[..cut]), Parsed::Partial),
                "cut at {cut}"
            );
        }
        assert!(matches!(parse(full), Parsed::Complete(..)));
    }

    #[test]
    fn limits_and_errors() {
        assert_eq!(
            status(b"POST /a HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), 400);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert_eq!(status(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn never_panics_on_garbage_or_mutations() {
        // A small deterministic generator (xorshift): no extra dependency, same cases every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = b"POST /api/v1/register HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        for i in 0..20_000 {
            let mut buf = valid.to_vec();
            if i % 2 == 0 {
                for _ in 0..(next() % 6 + 1) {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
            } else {
                buf = (0..(next() % 200)).map(|_| next() as u8).collect();
            }
            if let Parsed::Complete(req, n) = parse(&buf) {
                assert!(n <= buf.len());
                assert!(req.body.len() <= MAX_BODY_BYTES);
            }
        }
    }

    #[test]
    fn response_format() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            405,
            "application/json",
            &[("Allow", "POST")],
            b"{}",
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("Allow: POST\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
