//! `/metrics` through the real binary: valid Prometheus text, and counters that move as
//! traffic flows.

mod common;

use common::{dns_query, udp_dns, Hub};
use std::collections::{BTreeMap, BTreeSet};

fn scrape(hub: &Hub) -> String {
    let (status, headers, body) = hub.http(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/plain")));
    String::from_utf8(body).unwrap()
}

/// Parses with a Prometheus text parser, then checks what it is lenient about: every sample
/// belongs to a family declared (HELP + TYPE) before it, and no series appears twice.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(!scrape.samples.is_empty());
    let mut declared = BTreeSet::new();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(
                declared.insert(name.to_string()),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(
            declared.contains(family),
            "sample {name} before its TYPE line"
        );
        assert!(name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':'));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            series.insert(key.to_string(), v).is_none(),
            "series {key} twice"
        );
    }
    series
}

fn sum(series: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let hub = Hub::start(&[]);
    let before = parse(&scrape(&hub));
    assert_eq!(before["edgeproxy_backends"], 0.0);

    hub.register("pop-gru", "gru.pop", "sa", "10.50.1.1", 80);
    for i in 0..20u16 {
        let q = dns_query(i, "gru.pop.internal", 1, None);
        assert!(udp_dns(hub.dns, &q).is_some());
    }
    assert!(udp_dns(hub.dns, &dns_query(99, "nope.internal", 28, None)).is_some());

    let after = parse(&scrape(&hub));
    assert_eq!(after["edgeproxy_backends"], 1.0);
    assert_eq!(after["edgeproxy_backends_healthy"], 1.0);
    assert_eq!(
        after["edgeproxy_backend_up{id=\"pop-gru\",app=\"gru.pop\",region=\"sa\"}"],
        1.0
    );
    assert!(after["edgeproxy_snapshot_version"] > before["edgeproxy_snapshot_version"]);
    assert_eq!(sum(&after, "edgeproxy_dns_queries_total{"), 21.0);
    assert_eq!(sum(&after, "edgeproxy_dns_responses_total{"), 21.0);
    let nx: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("edgeproxy_dns_responses_total{") && k.contains("NXDOMAIN"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(nx, 1.0);
    let aaaa: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("edgeproxy_dns_questions_total{") && k.contains("\"AAAA\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(aaaa, 1.0);
    assert_eq!(
        after["edgeproxy_api_requests_total{route=\"/api/v1/register\",status=\"201\"}"],
        1.0
    );
    assert!(after["edgeproxy_publish_seconds_count"] >= 1.0);
    assert!(after["edgeproxy_store_syncs_total"] >= 1.0);
}
