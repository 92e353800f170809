//! Turning a registration body into a [`BackendSpec`], with errors precise enough to act on:
//! which field, and what is wrong with it.

use crate::config::{is_check_path, CHECK_COUNT, CHECK_INTERVAL_MS, CHECK_TIMEOUT_MS};
use crate::health::{CheckKind, CheckSpec};
use crate::names;
use crate::registry::BackendSpec;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// A refused registration: the message and, when one field is at fault, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub field: Option<&'static str>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        field: Some(field),
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "id",
    "app",
    "region",
    "ip",
    "port",
    "country",
    "weight",
    "soft_limit",
    "hard_limit",
    "ttl_secs",
    "alpn",
    "check",
];

const CHECK_FIELDS: &[&str] = &["type", "path", "interval_ms", "timeout_ms", "rise", "fall"];

/// The optional `check` object: the backend's own health-check settings, each field optional.
fn check(obj: &Map<String, Value>) -> Result<Option<CheckSpec>, Invalid> {
    let c = match obj.get("check") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(invalid(
                "check",
                "'check' must be an object such as {\"type\":\"http\",\"path\":\"/healthz\"}",
            ))
        }
    };
    if let Some(unknown) = c.keys().find(|k| !CHECK_FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            "check",
            format!(
                "unknown field 'check.{unknown}' (known: {})",
                CHECK_FIELDS.join(", ")
            ),
        ));
    }
    let kind = match c.get("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => match t.as_str() {
            "tcp" => Some(CheckKind::Tcp),
            "http" => Some(CheckKind::Http),
            "none" => Some(CheckKind::None),
            _ => {
                return Err(invalid(
                    "check.type",
                    "'check.type' must be tcp, http or none",
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                "check.type",
                "'check.type' must be tcp, http or none",
            ))
        }
    };
    let path = match c.get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if is_check_path(p) => Some(p.clone()),
        Some(_) => {
            return Err(invalid(
                "check.path",
                "'check.path' must be an HTTP path: '/' then printable characters, no spaces, \
                 at most 1024",
            ))
        }
    };
    if path.is_some() && matches!(kind, Some(CheckKind::Tcp | CheckKind::None)) {
        return Err(invalid(
            "check.path",
            "'check.path' applies to http checks only (\"type\":\"http\")",
        ));
    }
    let count = |field: &'static str| -> Result<Option<u32>, Invalid> {
        Ok(opt_uint(c, field, CHECK_COUNT)?.map(|v| v as u32))
    };
    Ok(Some(CheckSpec {
        kind,
        path,
        interval_ms: opt_uint(c, "interval_ms", CHECK_INTERVAL_MS)
            .map_err(|e| within("check.interval_ms", e))?,
        timeout_ms: opt_uint(c, "timeout_ms", CHECK_TIMEOUT_MS)
            .map_err(|e| within("check.timeout_ms", e))?,
        rise: count("rise").map_err(|e| within("check.rise", e))?,
        fall: count("fall").map_err(|e| within("check.fall", e))?,
    }))
}

/// An error about a field of `check`, renamed to its full path.
fn within(field: &'static str, e: Invalid) -> Invalid {
    let short = field.trim_start_matches("check.");
    invalid(
        field,
        e.message
            .replace(&format!("'{short}'"), &format!("'{field}'")),
    )
}

/// At most this many ALPN protocols per backend.
pub const MAX_ALPN: usize = 8;

/// The optional `alpn` list: 1..=8 tokens of 1..=255 printable ASCII bytes.
fn alpn(obj: &Map<String, Value>) -> Result<Option<Vec<String>>, Invalid> {
    let bad = || {
        invalid(
            "alpn",
            format!(
                "'alpn' must be a list of 1 to {MAX_ALPN} protocol names (1-255 printable ASCII \
                 characters each), such as [\"h2\",\"http/1.1\"]"
            ),
        )
    };
    let list = match obj.get("alpn") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad()),
    };
    if list.is_empty() || list.len() > MAX_ALPN {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        match p {
            Value::String(s)
                if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                out.push(s.clone())
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(out))
}

/// A required, non-empty string field.
fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            Err(invalid(field, format!("missing required field '{field}'")))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(field, format!("'{field}' must not be empty")))
        }
        Some(Value::String(s)) => Ok(s.trim()),
        Some(_) => Err(invalid(field, format!("'{field}' must be a string"))),
    }
}

/// An optional unsigned integer field within `range`.
fn opt_uint(
    obj: &Map<String, Value>,
    field: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if range.contains(&v) => Ok(Some(v)),
            _ => Err(invalid(
                field,
                format!(
                    "'{field}' must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        },
        Some(_) => Err(invalid(field, format!("'{field}' must be an integer"))),
    }
}

/// Validates a registration body.
pub fn registration(body: &[u8]) -> Result<BackendSpec, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        message: format!("malformed JSON: {e}"),
        field: None,
    })?;
    let Value::Object(obj) = value else {
        return Err(Invalid {
            message: "the body must be a JSON object".into(),
            field: None,
        });
    };
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(Invalid {
            message: format!(
                "unknown field '{unknown}' (known: {})",
                KNOWN_FIELDS.join(", ")
            ),
            field: None,
        });
    }
    let id = string(&obj, "id")?;
    if !names::is_dns_name(id) {
        return Err(invalid(
            "id",
            "'id' must be DNS-safe labels: letters, digits and '-', separated by dots",
        ));
    }
    let app = string(&obj, "app")?;
    if !names::is_dns_name(app) {
        return Err(invalid(
            "app",
            "'app' must be DNS-safe labels: letters, digits and '-', separated by dots",
        ));
    }
    let region = string(&obj, "region")?.to_ascii_lowercase();
    if !names::is_region_code(&region) {
        return Err(invalid(
            "region",
            "'region' must be a region code: 2-16 letters, digits or '-' (sa, us, eu, ap, gru...)",
        ));
    }
    // A POP code becomes its region (and country, unless one is given); an unknown code is
    // refused rather than guessed (see crate::geo::Regions).
    let (region, implied_country) = match crate::geo::current().regions().resolve(&region) {
        Ok((r, cc)) => (r.to_string(), cc),
        Err(why) => return Err(invalid("region", why)),
    };
    let ip: IpAddr = string(&obj, "ip")?
        .parse()
        .map_err(|_| invalid("ip", "'ip' must be an IPv4 or IPv6 address"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(invalid(
            "ip",
            "'ip' must be a unicast address a backend can listen on",
        ));
    }
    let port = match obj.get("port") {
        None | Some(Value::Null) => return Err(invalid("port", "missing required field 'port'")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ 1..=65535) => p as u16,
            _ => return Err(invalid("port", "'port' must be an integer from 1 to 65535")),
        },
        Some(_) => return Err(invalid("port", "'port' must be an integer")),
    };
    let country = match obj.get("country") {
        None | Some(Value::Null) => implied_country.map(|c| c.to_string()),
        Some(Value::String(c)) if names::is_country_code(c.trim()) => {
            Some(c.trim().to_ascii_uppercase())
        }
        Some(_) => {
            return Err(invalid(
                "country",
                "'country' must be a two-letter ISO 3166 code such as BR",
            ))
        }
    };
    let weight = opt_uint(&obj, "weight", 1..=100)?.unwrap_or(1) as u32;
    let soft_limit = opt_uint(&obj, "soft_limit", 0..=u64::from(u32::MAX))?.map(|v| v as u32);
    let hard_limit = opt_uint(&obj, "hard_limit", 1..=u64::from(u32::MAX))?.map(|v| v as u32);
    if let (Some(soft), Some(hard)) = (soft_limit, hard_limit) {
        if hard < soft {
            return Err(invalid(
                "hard_limit",
                format!("'hard_limit' ({hard}) must not be below 'soft_limit' ({soft})"),
            ));
        }
    }
    let ttl_secs = opt_uint(&obj, "ttl_secs", 0..=365 * 86_400)?;
    let alpn = alpn(&obj)?;
    let check = check(&obj)?;
    Ok(BackendSpec {
        id: id.to_string(),
        app: app.to_ascii_lowercase(),
        region,
        country,
        ip,
        port,
        weight,
        soft_limit,
        hard_limit,
        ttl_secs,
        alpn,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> Invalid {
        registration(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn seed_registration_is_accepted() {
        let spec = registration(
            br#"{"id":"pop-gru","app":"gru.pop","region":"sa","ip":"10.50.1.1","port":80}"#,
        )
        .unwrap();
        assert_eq!(spec.id, "pop-gru");
        assert_eq!(spec.app, "gru.pop");
        assert_eq!(spec.region, "sa");
        assert_eq!(spec.ip, "10.50.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(spec.port, 80);
        assert_eq!(spec.weight, 1);
        assert_eq!(spec.ttl_secs, None);
    }

    #[test]
    fn pop_codes_become_their_region() {
        let spec = registration(
            br#"{"id":"pop-gru","app":"gru.pop","region":"GRU","ip":"10.50.1.1","port":80}"#,
        )
        .unwrap();
        assert_eq!(
            (spec.region.as_str(), spec.country.as_deref()),
            ("sa", Some("BR"))
        );
        // A given country wins over the code's.
        let spec = registration(
            br#"{"id":"b","app":"a","region":"fra","ip":"10.50.3.1","port":80,"country":"nl"}"#,
        )
        .unwrap();
        assert_eq!(
            (spec.region.as_str(), spec.country.as_deref()),
            ("eu", Some("NL"))
        );
    }

    #[test]
    fn optional_fields() {
        let spec = registration(
            br#"{"id":"b","app":"App","region":"EU","ip":"::1","port":8080,"country":"de",
                 "weight":5,"soft_limit":200,"hard_limit":300,"ttl_secs":0}"#,
        )
        .unwrap();
        assert_eq!(spec.app, "app");
        assert_eq!(spec.region, "eu");
        assert_eq!(spec.country.as_deref(), Some("DE"));
        assert_eq!(
            (spec.weight, spec.soft_limit, spec.hard_limit),
            (5, Some(200), Some(300))
        );
        assert_eq!(spec.ttl_secs, Some(0));
        assert_eq!(spec.alpn, None);
        let spec = registration(
            br#"{"id":"b","app":"a","region":"sa","ip":"::1","port":1,"alpn":["h2","http/1.1"]}"#,
        )
        .unwrap();
        assert_eq!(
            spec.alpn,
            Some(vec!["h2".to_string(), "http/1.1".to_string()])
        );
    }

    #[test]
    fn alpn_errors() {
        let base = r#""id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":80"#;
        let long = "x".repeat(256);
        let nine = ["\"p\""; 9].join(",");
        for bad in [
            "[]".to_string(),
            "\"h2\"".to_string(),
            "[\"\"]".to_string(),
            "[\"h 2\"]".to_string(),
            "[\"h2\\u0000\"]".to_string(),
            "[\"é\"]".to_string(),
            "[2]".to_string(),
            format!("[\"{long}\"]"),
            format!("[{nine}]"),
        ] {
            let e = err(&format!("{{{base},\"alpn\":{bad}}}"));
            assert_eq!(e.field, Some("alpn"), "{bad}");
        }
        let max = format!("[\"{}\"]", "x".repeat(255));
        assert!(registration(format!("{{{base},\"alpn\":{max}}}").as_bytes()).is_ok());
    }

    #[test]
    fn check_override() {
        let base = r#""id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":80"#;
        let ok = |c: &str| registration(format!("{{{base},\"check\":{c}}}").as_bytes()).unwrap();
        let spec = ok(
            r#"{"type":"http","path":"/healthz","interval_ms":1000,"timeout_ms":500,"rise":2,"fall":3}"#,
        );
        let c = spec.check.unwrap();
        assert_eq!(c.kind, Some(CheckKind::Http));
        assert_eq!(c.path.as_deref(), Some("/healthz"));
        assert_eq!(
            (c.interval_ms, c.timeout_ms, c.rise, c.fall),
            (Some(1000), Some(500), Some(2), Some(3))
        );
        assert_eq!(
            ok(r#"{"type":"none"}"#).check.unwrap().kind,
            Some(CheckKind::None)
        );
        assert_eq!(ok("{}").check, Some(CheckSpec::default()));
        assert_eq!(ok("null").check, None);
        for (c, field) in [
            ("5", "check"),
            (r#"{"kind":"tcp"}"#, "check"),
            (r#"{"type":"icmp"}"#, "check.type"),
            (r#"{"type":1}"#, "check.type"),
            (r#"{"path":"healthz"}"#, "check.path"),
            (r#"{"path":"/a b"}"#, "check.path"),
            (r#"{"path":"/x\r\nHost: evil"}"#, "check.path"),
            (r#"{"type":"tcp","path":"/healthz"}"#, "check.path"),
            (r#"{"interval_ms":10}"#, "check.interval_ms"),
            (r#"{"interval_ms":"1000"}"#, "check.interval_ms"),
            (r#"{"timeout_ms":0}"#, "check.timeout_ms"),
            (r#"{"timeout_ms":60001}"#, "check.timeout_ms"),
            (r#"{"rise":0}"#, "check.rise"),
            (r#"{"fall":101}"#, "check.fall"),
            (r#"{"fall":-1}"#, "check.fall"),
        ] {
            let e = err(&format!("{{{base},\"check\":{c}}}"));
            assert_eq!(e.field, Some(field), "{c}: {}", e.message);
            if field != "check" {
                assert!(e.message.contains(field), "{c}: {}", e.message);
            }
        }
    }

    #[test]
    fn precise_errors() {
        let base = r#""id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":80"#;
        assert_eq!(err("{").field, None);
        assert!(err("{").message.starts_with("malformed JSON"));
        assert_eq!(err("[]").field, None);
        assert_eq!(
            err(r#"{"app":"a","region":"sa","ip":"10.0.0.1","port":80}"#).field,
            Some("id")
        );
        assert_eq!(
            err(r#"{"id":"","app":"a","region":"sa","ip":"10.0.0.1","port":80}"#).field,
            Some("id")
        );
        assert_eq!(
            err(r#"{"id":5,"app":"a","region":"sa","ip":"10.0.0.1","port":80}"#).field,
            Some("id")
        );
        assert_eq!(
            err(r#"{"id":"a b","app":"a","region":"sa","ip":"10.0.0.1","port":80}"#).field,
            Some("id")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a_b","region":"sa","ip":"10.0.0.1","port":80}"#).field,
            Some("app")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"s","ip":"10.0.0.1","port":80}"#).field,
            Some("region")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0","port":80}"#).field,
            Some("ip")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"0.0.0.0","port":80}"#).field,
            Some("ip")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":0}"#).field,
            Some("port")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":65536}"#).field,
            Some("port")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1","port":"80"}"#).field,
            Some("port")
        );
        assert_eq!(
            err(r#"{"id":"b","app":"a","region":"sa","ip":"10.0.0.1"}"#).field,
            Some("port")
        );
        assert_eq!(
            err(&format!("{{{base},\"weight\":0}}")).field,
            Some("weight")
        );
        assert_eq!(
            err(&format!("{{{base},\"weight\":101}}")).field,
            Some("weight")
        );
        assert_eq!(
            err(&format!("{{{base},\"weight\":1.5}}")).field,
            Some("weight")
        );
        assert_eq!(
            err(&format!("{{{base},\"soft_limit\":10,\"hard_limit\":5}}")).field,
            Some("hard_limit")
        );
        assert_eq!(
            err(&format!("{{{base},\"country\":\"BRA\"}}")).field,
            Some("country")
        );
        let e = err(r#"{"id":"b","app":"a","region":"ue","ip":"10.0.0.1","port":80}"#);
        assert_eq!(e.field, Some("region"));
        assert!(e.message.contains("unknown region 'ue'"), "{}", e.message);
        assert_eq!(
            err(&format!("{{{base},\"ttl_secs\":-1}}")).field,
            Some("ttl_secs")
        );
        assert!(err(&format!("{{{base},\"wieght\":2}}"))
            .message
            .contains("unknown field 'wieght'"));
    }
}
