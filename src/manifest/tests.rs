use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

fn keypair() -> minisign::KeyPair {
    minisign::KeyPair::generate_unencrypted_keypair().unwrap()
}

fn sign(kp: &minisign::KeyPair, bytes: &[u8]) -> String {
    minisign::sign(
        Some(&kp.pk),
        &kp.sk,
        std::io::Cursor::new(bytes),
        None,
        None,
    )
    .unwrap()
    .into_string()
}

fn doc() -> serde_json::Value {
    serde_json::json!({
        "version": "2.0.0",
        "url": "hello-2.0.0",
        "sha256": "ab".repeat(32),
        "size": 123,
        "published_at": "2026-11-23T10:00:00Z",
        "expires": "2026-12-23T10:00:00Z",
        "rollout": 10,
        "channel": "stable"
    })
}

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

#[test]
fn a_signed_manifest_loads() {
    let kp = keypair();
    let bytes = serde_json::to_vec(&doc()).unwrap();
    let m = load(
        &bytes,
        Some(&sign(&kp, &bytes)),
        &[kp.pk.to_base64()],
        at("2026-11-24T00:00:00Z"),
    )
    .unwrap();
    assert!(m.signed);
    assert_eq!(m.version.as_deref(), Some("2.0.0"));
    assert_eq!(m.sha256, Some([0xab; 32]));
    assert_eq!(m.size, Some(123));
    assert_eq!(m.rollout, Rollout::Percent(10));
    assert_eq!(m.channel.as_deref(), Some("stable"));
}

/// Found by the `manifest` fuzz target: an expired manifest read at a
/// clock past the year 9999 panicked while its error was written.
#[test]
fn fuzz_manifest_an_expiry_past_the_year_9999_is_reported() {
    let bytes = serde_json::to_vec(&doc()).unwrap();
    let m = Manifest::parse(&bytes, true).unwrap();
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
    let err = m.check_expiry(far).unwrap_err().to_string();
    assert!(err.contains("1099511627776 s after the epoch"), "{err}");
    assert!(err.contains("2026-12-23T10:00:00Z"), "{err}");
}

#[test]
fn each_check_has_its_own_error() {
    let (kp, other) = (keypair(), keypair());
    let keys = [kp.pk.to_base64()];
    let bytes = serde_json::to_vec(&doc()).unwrap();
    let sig = sign(&kp, &bytes);
    let now = at("2026-11-24T00:00:00Z");
    // Changed after signing.
    let mut changed = bytes.clone();
    let i = changed.iter().position(|b| *b == b'1').unwrap();
    changed[i] = b'9';
    let err = load(&changed, Some(&sig), &keys, now).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    // Signed by a key nobody trusts.
    let err = load(&bytes, Some(&sign(&other, &bytes)), &keys, now).unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
    assert!(err.to_string().contains(&key_id_of(&kp.pk)), "{err}");
    // Expired.
    let err = load(&bytes, Some(&sig), &keys, at("2027-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(err.to_string().contains("2026-12-23T10:00:00Z"), "{err}");
    // Garbage signature.
    let err = load(&bytes, Some("nonsense"), &keys, now).unwrap_err();
    assert!(matches!(err, Error::UnreadableSignature { .. }), "{err}");
    // No signature, but fields only a signed manifest may carry.
    let err = load(&bytes, None, &keys, now).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsigned {
                field: "published_at"
            }
        ),
        "{err}"
    );
}

#[test]
fn two_keys_rotate() {
    let (old, new) = (keypair(), keypair());
    let keys = [old.pk.to_base64(), new.pk.to_base64()];
    let bytes = serde_json::to_vec(&doc()).unwrap();
    let now = at("2026-11-24T00:00:00Z");
    assert!(load(&bytes, Some(&sign(&old, &bytes)), &keys, now).is_ok());
    assert!(load(&bytes, Some(&sign(&new, &bytes)), &keys, now).is_ok());
}

#[test]
fn signed_manifests_must_state_version_and_digest() {
    for field in ["version", "sha256"] {
        let mut d = doc();
        d.as_object_mut().unwrap().remove(field);
        let err = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err}");
        assert!(Manifest::parse(&serde_json::to_vec(&d).unwrap(), false).is_ok());
    }
}

#[test]
fn the_unsigned_form_keeps_working() {
    let legacy = serde_json::json!({"version": "1.0.0", "url": "a", "signature": "x"});
    let bytes = serde_json::to_vec(&legacy).unwrap();
    let kp = keypair();
    let m = load(&bytes, None, &[kp.pk.to_base64()], SystemTime::now()).unwrap();
    assert!(!m.signed);
    assert_eq!(m.signature.as_deref(), Some("x"));
    assert_eq!(m.rollout, Rollout::Percent(100));
    let only_url = load(br#"{"url": "a"}"#, None, &[], SystemTime::now()).unwrap();
    assert_eq!(only_url.url, "a");
}

#[test]
fn bad_fields_are_named() {
    let cases = [
        (serde_json::json!({"url": "a", "rollout": 101}), "rollout"),
        (
            serde_json::json!({"url": "a", "rollout": [{"after": "1h", "percent": 5}]}),
            "rollout",
        ),
        (
            serde_json::json!({"url": "a", "expires": "tomorrow"}),
            "expires",
        ),
        (serde_json::json!({"url": "a", "sha256": "abc"}), "sha256"),
        (serde_json::json!({"url": ""}), "url"),
    ];
    for (value, field) in cases {
        let err = Manifest::parse(&serde_json::to_vec(&value).unwrap(), false).unwrap_err();
        assert!(err.to_string().contains(field), "{value}: {err}");
    }
    let err = Manifest::parse(br#"{"url": "a", "rollot": 5}"#, false).unwrap_err();
    assert!(err.to_string().contains("rollot"), "{err}");
}

#[test]
fn targets_pick_this_host() {
    let mut targets = serde_json::Map::new();
    targets.insert(
        TARGET.to_owned(),
        serde_json::json!({"url": "mine", "sha256": "cd".repeat(32), "size": 7}),
    );
    targets.insert(
        "sparc-sun-solaris".to_owned(),
        serde_json::json!({"url": "theirs", "sha256": "ef".repeat(32)}),
    );
    let d = serde_json::json!({"version": "1.0.0", "targets": targets});
    let m = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap();
    assert_eq!(
        (m.url.as_str(), m.sha256, m.size),
        ("mine", Some([0xcd; 32]), Some(7))
    );
    let d = serde_json::json!({"version": "1.0.0", "targets": {"sparc-sun-solaris": {"url": "x", "sha256": "ef".repeat(32)}}});
    let err = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap_err();
    assert!(matches!(err, Error::NoTarget { .. }), "{err}");
    assert!(err.to_string().contains("sparc-sun-solaris"), "{err}");
}

#[test]
fn a_publisher_or_operator_of_another_target_checks_every_target() {
    let d = serde_json::json!({"version": "1.0.0", "rollout": 10, "targets": {
        "sparc-sun-solaris": {"url": "x", "sha256": "ef".repeat(32)},
        "zz-other": {"url": "y", "sha256": "ab".repeat(32)}}});
    let doc: Document = serde_json::from_value(d).unwrap();
    let m = Manifest::from_document_anywhere(doc.clone(), false).unwrap();
    assert_eq!((m.url.as_str(), m.version.as_deref()), ("x", Some("1.0.0")));
    assert_eq!(m.percent_at(SystemTime::now()), 10);
    // Any target's artifact that a host of it would refuse is refused.
    let d = serde_json::json!({"version": "1.0.0", "targets": {
        "sparc-sun-solaris": {"url": "x", "sha256": "ef".repeat(32)},
        "zz-other": {"url": "y", "sha256": "not hex"}}});
    let doc: Document = serde_json::from_value(d).unwrap();
    let err = Manifest::from_document_anywhere(doc, false).unwrap_err();
    assert!(err.to_string().contains("not hex"), "{err}");
}

#[test]
fn schedules_count_from_published_at() {
    let d = serde_json::json!({
        "url": "a",
        "published_at": "2026-11-23T10:00:00Z",
        "rollout": [{"after": "0s", "percent": 5}, {"after": "24h", "percent": 50}, {"after": "48h", "percent": 100}]
    });
    let m = Manifest::parse(&serde_json::to_vec(&d).unwrap(), false).unwrap();
    assert_eq!(m.percent_at(at("2026-11-23T09:00:00Z")), 0);
    assert_eq!(m.percent_at(at("2026-11-23T10:00:00Z")), 5);
    assert_eq!(m.percent_at(at("2026-11-24T10:00:00Z")), 50);
    assert_eq!(
        m.percent_at(at("2026-11-30T10:00:00Z") + Duration::from_secs(1)),
        100
    );
}

#[test]
fn documents_round_trip() {
    let d: Document = serde_json::from_value(doc()).unwrap();
    let again: Document = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    assert_eq!(d, again);
}

proptest! {
    /// No input makes the manifest parser panic.
    #[test]
    fn manifest_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::parse(&bytes, true);
        let _ = Manifest::parse(&bytes, false);
        let _ = looks_like(&bytes);
    }

    /// Nor does a JSON object with arbitrary values in the known fields.
    #[test]
    fn manifest_fields_never_panic(
        version in proptest::option::of(".{0,12}"),
        url in proptest::option::of(".{0,12}"),
        sha in proptest::option::of("[0-9a-f]{0,70}"),
        size in proptest::option::of(any::<u64>()),
        time in proptest::option::of(".{0,30}"),
        percent in any::<i64>(),
        after in ".{0,8}",
    ) {
        let mut d = serde_json::json!({"rollout": percent});
        if let Some(v) = version { d["version"] = v.into(); }
        if let Some(v) = url { d["url"] = v.into(); }
        if let Some(v) = sha { d["sha256"] = v.into(); }
        if let Some(v) = size { d["size"] = v.into(); }
        if let Some(v) = time { d["published_at"] = v.clone().into(); d["expires"] = v.into(); }
        let bytes = serde_json::to_vec(&d).unwrap();
        if let Ok(m) = Manifest::parse(&bytes, true) {
            let _ = m.check_expiry(SystemTime::now());
            let _ = m.percent_at(SystemTime::now());
        }
        let s = serde_json::json!({"url": "a", "published_at": "2026-11-23T10:00:00Z",
            "rollout": [{"after": after, "percent": (percent & 0xff) as u8}]});
        if let Ok(m) = Manifest::parse(&serde_json::to_vec(&s).unwrap(), false) {
            let _ = m.percent_at(SystemTime::now());
        }
    }

    /// Nor a signature file.
    #[test]
    fn signature_parser_never_panics(text in ".{0,300}") {
        let kp = keypair();
        let _ = verify_signature(b"{}", &text, &[kp.pk.to_base64()]);
    }
}

#[test]
fn patches_are_read_for_this_target_and_checked() {
    let mut d = doc();
    d["binary_sha256"] = "cd".repeat(32).into();
    d["patches"] = serde_json::json!([
        {"from": "01".repeat(32), "url": "a.zst", "sha256": "02".repeat(32), "size": 10}
    ]);
    let m = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap();
    assert_eq!(m.binary(), Some([0xcd; 32]));
    assert_eq!(
        m.patches,
        vec![Patch {
            from: [1; 32],
            url: "a.zst".into(),
            sha256: [2; 32],
            size: 10
        }]
    );
    // Without binary_sha256 the artifact is the binary.
    let plain = Manifest::parse(&serde_json::to_vec(&doc()).unwrap(), true).unwrap();
    assert_eq!(plain.binary(), Some([0xab; 32]));
    assert!(plain.patches.is_empty());
    // Per target: the chosen artifact's patches.
    let mut t = doc();
    t.as_object_mut().unwrap().remove("url");
    t["targets"] = serde_json::json!({ TARGET: {
        "url": "x", "sha256": "ab".repeat(32), "binary_sha256": "ef".repeat(32),
        "patches": [{"from": "03".repeat(32), "url": "x.zst", "sha256": "04".repeat(32), "size": 5}]
    }});
    let m = Manifest::parse(&serde_json::to_vec(&t).unwrap(), true).unwrap();
    assert_eq!(m.binary(), Some([0xef; 32]));
    assert_eq!(m.patches[0].from, [3; 32]);
    // Bad fields are named.
    for (patch, field) in [
        (
            serde_json::json!({"from": "zz", "url": "a", "sha256": "02".repeat(32), "size": 1}),
            "patches",
        ),
        (
            serde_json::json!({"from": "01".repeat(32), "url": "", "sha256": "02".repeat(32), "size": 1}),
            "patches",
        ),
        (
            serde_json::json!({"from": "01".repeat(32), "url": "a", "sha256": "02".repeat(32), "size": 0}),
            "patches",
        ),
    ] {
        let mut d = doc();
        d["patches"] = serde_json::json!([patch]);
        let err = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    let mut d = doc();
    d["patches"] =
        serde_json::json!([{"from": "01".repeat(32), "url": "a", "sha256": "02".repeat(32)}]);
    assert!(
        Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).is_err(),
        "size is required"
    );
}

#[test]
fn an_unsigned_manifest_with_patches_is_refused_when_a_key_is_set() {
    let mut d = serde_json::json!({"version": "2.0.0", "url": "u", "sha256": "ab".repeat(32)});
    d["patches"] = serde_json::json!([
        {"from": "01".repeat(32), "url": "a.zst", "sha256": "02".repeat(32), "size": 10}
    ]);
    let err = load(
        &serde_json::to_vec(&d).unwrap(),
        None,
        &[keypair().pk.to_base64()],
        at("2026-11-24T00:00:00Z"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsigned { field: "patches" }), "{err}");
}

#[test]
fn yanked_versions_are_checked_and_signed_only() {
    let now = at("2026-11-24T00:00:00Z");
    let mut d = doc();
    d["version"] = "1.0.0".into();
    d["yanked"] = serde_json::json!(["2.0.0", "v2.0.0", "1.5.0"]);
    let m = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap();
    assert!(m.yanks("2.0.0") && m.yanks("v2.0.0") && m.yanks("1.5.0"));
    assert!(!m.yanks("1.0.0") && !m.yanks("2.0.1") && !m.yanks("garbage"));
    assert_eq!(m.yanked.len(), 2, "duplicates fold");
    // A manifest that offers what it yanks is refused.
    d["yanked"] = serde_json::json!(["1.0.0"]);
    let err = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap_err();
    assert!(
        err.to_string()
            .contains("the version the manifest itself offers"),
        "{err}"
    );
    // So is a version that does not parse.
    d["yanked"] = serde_json::json!(["two"]);
    let err = Manifest::parse(&serde_json::to_vec(&d).unwrap(), true).unwrap_err();
    assert!(
        err.to_string().contains("\"two\" is not a semver version"),
        "{err}"
    );
    // Unsigned, with a key configured, a yank is refused like the other
    // signed-only fields.
    let kp = keypair();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "version": "1.0.0", "url": "a", "sha256": "ab".repeat(32), "yanked": ["2.0.0"]
    }))
    .unwrap();
    let err = load(&bytes, None, &[kp.pk.to_base64()], now).unwrap_err();
    assert!(matches!(err, Error::Unsigned { field: "yanked" }), "{err}");
    // Without a key it loads, unsigned: hosts then ignore the list.
    let m = load(&bytes, None, &[], now).unwrap();
    assert!(!m.signed && m.yanks("2.0.0"));
}
