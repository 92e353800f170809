//! API authentication: bearer tokens for the routes that change the registry.
//!
//! With tokens configured (`EDGEPROXY_API_TOKEN`, several comma-separated for rotation, or
//! `--api-token-file`), every mutating request (anything but GET) needs
//! `Authorization: Bearer <token>`; with `--api-auth-reads` the read routes need it too, except
//! `/health`, which load balancers and probes must reach. Comparison takes the same time
//! whatever the token's content, and tokens never reach a log line.

use super::http::{Method, Request};
use super::routes::Response;

/// The configured tokens and what they protect.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Box<[u8]>>,
    protect_reads: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token, even in a debug dump of the configuration.
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

impl Auth {
    /// Tokens from a comma-separated list (empty entries ignored).
    pub fn new(tokens: &str, protect_reads: bool) -> Auth {
        Auth {
            tokens: tokens
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().into())
                .collect(),
            protect_reads,
        }
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// `Ok` when `req` may proceed; otherwise the 401 to answer.
    pub fn check(&self, req: &Request<'_>) -> Result<(), Response> {
        if !self.enabled() {
            return Ok(());
        }
        let needs = match req.method {
            Method::Get => self.protect_reads && req.path != "/health",
            _ => true,
        };
        if !needs {
            return Ok(());
        }
        let presented = req
            .authorization
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .unwrap_or("");
        // Check every token, so timing does not reveal which one (or whether one) matched.
        let mut ok = false;
        for t in &self.tokens {
            ok |= constant_time_eq(presented.as_bytes(), t);
        }
        if ok {
            Ok(())
        } else {
            let mut r = Response::error(401, "missing or invalid bearer token", None);
            r.www_authenticate = true;
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::http::{parse, Parsed};

    fn check(auth: &Auth, raw: &str) -> u16 {
        let Parsed::Complete(req, _) = parse(raw.as_bytes()) else {
            panic!("bad request {raw}")
        };
        match auth.check(&req) {
            Ok(()) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn mutations_need_a_token_reads_do_not() {
        let auth = Auth::new("s3cret, next-one", false);
        assert_eq!(check(&auth, "POST /api/v1/register HTTP/1.1\r\n\r\n"), 401);
        assert_eq!(
            check(
                &auth,
                "DELETE /api/v1/backends/x HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n"
            ),
            401
        );
        assert_eq!(
            check(
                &auth,
                "DELETE /api/v1/backends/x HTTP/1.1\r\nAuthorization: Basic s3cret\r\n\r\n"
            ),
            401
        );
        assert_eq!(
            check(
                &auth,
                "POST /x HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n"
            ),
            200
        );
        assert_eq!(
            check(
                &auth,
                "POST /x HTTP/1.1\r\nAuthorization: bearer next-one\r\n\r\n"
            ),
            200
        );
        assert_eq!(
            check(
                &auth,
                "POST /x HTTP/1.1\r\nAuthorization: Bearer s3cre\r\n\r\n"
            ),
            401
        );
        assert_eq!(check(&auth, "GET /api/v1/backends HTTP/1.1\r\n\r\n"), 200);
        let strict = Auth::new("s3cret", true);
        assert_eq!(check(&strict, "GET /api/v1/backends HTTP/1.1\r\n\r\n"), 401);
        assert_eq!(check(&strict, "GET /health HTTP/1.1\r\n\r\n"), 200);
        let off = Auth::new(" , ", true);
        assert!(!off.enabled());
        assert_eq!(check(&off, "POST /x HTTP/1.1\r\n\r\n"), 200);
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
