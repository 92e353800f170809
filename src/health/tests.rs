use super::*;

fn check(rise: u32, fall: u32) -> Check {
    Check {
        kind: CheckKind::Tcp,
        path: "/".into(),
        interval_ms: 1_000,
        timeout_ms: 500,
        rise,
        fall,
    }
}

const EJ: Ejection = Ejection {
    failures: 3,
    window_ms: 10_000,
    backoff_ms: 5_000,
    backoff_max_ms: 40_000,
};

const REFUSED: Why = Why::new(Reason::Refused);

#[test]
fn fall_then_rise() {
    let c = check(2, 3);
    let mut m = Machine::new(0);
    assert_eq!(m.state(), State::Up);
    assert_eq!(m.on_check(1, Err(REFUSED), &c, &EJ), None);
    assert_eq!(m.on_check(2, Err(REFUSED), &c, &EJ), None);
    // A success in between restarts the count.
    assert_eq!(m.on_check(3, Ok(()), &c, &EJ), None);
    assert_eq!(m.on_check(4, Err(REFUSED), &c, &EJ), None);
    assert_eq!(m.on_check(5, Err(REFUSED), &c, &EJ), None);
    let t = m.on_check(6, Err(REFUSED), &c, &EJ).unwrap();
    assert_eq!(
        (t.from, t.to, t.why, t.count),
        (State::Up, State::Down, REFUSED, Some((3, 3)))
    );
    assert_eq!(m.state(), State::Down);
    // Down: further failures change nothing, one success is not enough, a failure restarts.
    assert_eq!(m.on_check(7, Err(REFUSED), &c, &EJ), None);
    assert_eq!(m.on_check(8, Ok(()), &c, &EJ), None);
    assert_eq!(m.on_check(9, Err(REFUSED), &c, &EJ), None);
    assert_eq!(m.on_check(10, Ok(()), &c, &EJ), None);
    let t = m.on_check(11, Ok(()), &c, &EJ).unwrap();
    assert_eq!(
        (t.from, t.to, t.count),
        (State::Down, State::Up, Some((2, 2)))
    );
    assert_eq!(t.why.reason, Reason::CheckPassed);
    assert_eq!(m.fail_streak(), 0);
}

#[test]
fn rise_and_fall_of_one_flip_at_once() {
    let c = check(1, 1);
    let mut m = Machine::new(0);
    assert_eq!(
        m.on_check(1, Err(REFUSED), &c, &EJ).unwrap().to,
        State::Down
    );
    assert_eq!(m.on_check(2, Ok(()), &c, &EJ).unwrap().to, State::Up);
}

#[test]
fn passive_failures_eject_within_the_window_only() {
    let mut m = Machine::new(0);
    assert_eq!(m.on_connect_failures(100, 1, &EJ), None);
    assert_eq!(m.on_connect_failures(200, 2, &EJ), None);
    let t = m.on_connect_failures(300, 3, &EJ).unwrap();
    assert_eq!((t.from, t.to), (State::Up, State::Ejected));
    assert_eq!(
        t.why,
        Why {
            reason: Reason::ConnectFailures,
            detail: 3
        }
    );
    assert_eq!(t.ejected_for_ms, Some(5_000));
    assert_eq!(m.ejected_until(), Some(5_300));

    // Failures spread wider than the window never eject.
    let mut m = Machine::new(0);
    assert_eq!(m.on_connect_failures(0, 1, &EJ), None);
    assert_eq!(m.on_connect_failures(11_000, 2, &EJ), None);
    assert_eq!(m.on_connect_failures(22_000, 3, &EJ), None);
    assert_eq!(m.on_connect_failures(33_000, 4, &EJ), None);
    // ... until they come close together.
    assert_eq!(m.on_connect_failures(33_001, 5, &EJ), None);
    assert!(m.on_connect_failures(33_002, 6, &EJ).is_some());

    // A success (the total drops) takes the failures before it out of the count.
    let mut m = Machine::new(0);
    assert_eq!(m.on_connect_failures(0, 2, &EJ), None);
    assert_eq!(m.on_connect_failures(1, 0, &EJ), None);
    assert_eq!(m.on_connect_failures(2, 1, &EJ), None);
    assert_eq!(m.on_connect_failures(3, 2, &EJ), None);
    assert!(m.on_connect_failures(4, 3, &EJ).is_some());

    // Many failures reported at once eject at once.
    let mut m = Machine::new(0);
    let t = m.on_connect_failures(0, 7, &EJ).unwrap();
    assert_eq!(t.why.detail, 7);

    // Off: never.
    let off = Ejection { failures: 0, ..EJ };
    let mut m = Machine::new(0);
    assert_eq!(m.on_connect_failures(0, 100, &off), None);
}

#[test]
fn a_down_backend_is_not_ejected() {
    let c = check(1, 1);
    let mut m = Machine::new(0);
    m.on_check(0, Err(REFUSED), &c, &EJ);
    assert_eq!(m.on_connect_failures(1, 10, &EJ), None);
    assert_eq!(m.state(), State::Down);
}

#[test]
fn ejection_backoff_grows_then_a_probe_brings_it_back() {
    let c = check(2, 3);
    let mut m = Machine::new(0);
    let mut now = 100;
    let mut total = 0;
    let mut lengths = Vec::new();
    for _ in 0..6 {
        total += 3;
        let t = m.on_connect_failures(now, total, &EJ).unwrap();
        lengths.push(t.ejected_for_ms.unwrap());
        // The probe at the end of the backoff fails: ejected again, for longer.
        now = m.ejected_until().unwrap();
        let t = m.on_check(now, Err(REFUSED), &c, &EJ).unwrap();
        assert_eq!(
            (t.from, t.to, t.why),
            (State::Ejected, State::Ejected, REFUSED)
        );
        lengths.push(t.ejected_for_ms.unwrap());
        now = m.ejected_until().unwrap();
        // This one passes: up at once (one probe, not `rise` of them).
        let t = m.on_check(now, Ok(()), &c, &EJ).unwrap();
        assert_eq!((t.from, t.to), (State::Ejected, State::Up));
        now += 1;
    }
    assert_eq!(
        lengths,
        [
            5_000, 10_000, 20_000, 40_000, 40_000, 40_000, 40_000, 40_000, 40_000, 40_000, 40_000,
            40_000
        ]
    );
    // Staying up for the longest backoff starts a new series.
    now += EJ.backoff_max_ms;
    total += 3;
    let t = m.on_connect_failures(now, total, &EJ).unwrap();
    assert_eq!(t.ejected_for_ms, Some(5_000));
}

#[test]
fn old_failures_do_not_count_after_coming_back() {
    let c = check(2, 3);
    let mut m = Machine::new(0);
    assert!(m.on_connect_failures(0, 3, &EJ).is_some());
    // Still failing while ejected (traffic already chosen): reported but ignored.
    assert_eq!(m.on_connect_failures(10, 5, &EJ), None);
    let now = m.ejected_until().unwrap();
    assert_eq!(m.on_check(now, Ok(()), &c, &EJ).unwrap().to, State::Up);
    // The shards' counts are still 5; two more failures are not three.
    assert_eq!(m.on_connect_failures(now + 1, 6, &EJ), None);
    assert_eq!(m.on_connect_failures(now + 2, 7, &EJ), None);
    assert!(m.on_connect_failures(now + 3, 8, &EJ).is_some());
}

#[test]
fn without_checks_the_ejection_just_ends() {
    let mut m = Machine::new(0);
    assert!(m.on_connect_failures(0, 3, &EJ).is_some());
    assert_eq!(m.on_ejection_over(4_999), None);
    let t = m.on_ejection_over(5_000).unwrap();
    assert_eq!(
        (t.from, t.to, t.why.reason),
        (State::Ejected, State::Up, Reason::EjectionOver)
    );
    assert_eq!(m.on_ejection_over(5_001), None);
}

#[test]
fn reasons_round_trip_and_read_well() {
    for r in 0..=8u8 {
        let why = Why {
            reason: Reason::from_u8(r),
            detail: 503,
        };
        assert_eq!(Why::unpack(why.pack()), why);
        assert_eq!(why.reason as u8, r);
    }
    assert_eq!(REFUSED.describe("tcp"), "tcp connect refused");
    let s = Why {
        reason: Reason::HttpStatus,
        detail: 503,
    };
    assert_eq!(s.describe("http"), "http status 503");
    for s in State::ALL {
        assert_eq!(State::from_u8(s as u8), s);
    }
}

#[test]
fn a_check_spec_overrides_field_by_field() {
    let defaults = check(2, 3);
    assert_eq!(Check::resolve(&defaults, None), defaults);
    let spec = CheckSpec {
        path: Some("/healthz".into()),
        rise: Some(5),
        ..CheckSpec::default()
    };
    let c = Check::resolve(&defaults, Some(&spec));
    assert_eq!(
        (c.kind, c.path.as_str(), c.rise, c.fall),
        (CheckKind::Http, "/healthz", 5, 3)
    );
    let none = CheckSpec {
        kind: Some(CheckKind::None),
        ..CheckSpec::default()
    };
    assert_eq!(Check::resolve(&defaults, Some(&none)).kind, CheckKind::None);
    // Stored form: absent fields stay absent.
    assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"type":"none"}"#);
}

#[test]
fn the_ring_reports_every_key_or_says_it_lost_some() {
    let ring = FailureRing::default();
    let mut cursor = 0;
    let mut out = Vec::new();
    assert_eq!(ring.drain(&mut cursor, &mut out), Drained::Keys);
    assert!(out.is_empty());
    for k in 1..=10 {
        ring.push(k);
    }
    assert_eq!(ring.drain(&mut cursor, &mut out), Drained::Keys);
    assert_eq!(out, (1..=10).collect::<Vec<_>>());
    out.clear();
    for k in 0..RING as u64 {
        ring.push(k);
    }
    assert_eq!(ring.drain(&mut cursor, &mut out), Drained::Keys);
    assert_eq!(out.len(), RING);
    out.clear();
    for k in 0..=RING as u64 {
        ring.push(k);
    }
    assert_eq!(ring.drain(&mut cursor, &mut out), Drained::Overflow);
    // And it carries on from there.
    ring.push(42);
    out.clear();
    assert_eq!(ring.drain(&mut cursor, &mut out), Drained::Keys);
    assert_eq!(out, [42]);
}
