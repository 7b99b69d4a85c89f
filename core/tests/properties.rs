//! Property tests of the wire format (issue 6, item 10, Rust side): the value decoder never
//! panics on any input and decodes whatever the encoder writes; keys are joined exactly like Go's
//! `path.Join`, checked against a transcription of the Go standard library's algorithm.
//! Endpoints are accepted as the client can use them, or refused saying which.

use etcd_registry::keys::{
    decode_info, encode_info, go_path_clean, go_path_join, node_key, node_name_of, sanitize_name,
    service_prefix,
};
use etcd_registry::{check_endpoint, ErrorKind, Info};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

/// Go's `path.Clean`, transcribed statement by statement from the Go standard library
/// (src/path/path.go, with its `lazybuf`), so that it shares no code or structure with the
/// library's own implementation.
fn go_clean_reference(path: &str) -> String {
    struct LazyBuf {
        buf: Vec<u8>,
        w: usize,
    }
    impl LazyBuf {
        fn index(&self, i: usize) -> u8 {
            self.buf[i]
        }
        fn append(&mut self, c: u8) {
            if self.w < self.buf.len() {
                self.buf[self.w] = c;
            } else {
                self.buf.push(c);
            }
            self.w += 1;
        }
    }

    if path.is_empty() {
        return ".".to_string();
    }
    let p = path.as_bytes();
    let n = p.len();
    let rooted = p[0] == b'/';
    let mut out = LazyBuf {
        buf: Vec::with_capacity(n),
        w: 0,
    };
    let (mut r, mut dotdot) = (0usize, 0usize);
    if rooted {
        out.append(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if p[r] == b'/' {
            // empty path element
            r += 1;
        } else if p[r] == b'.' && (r + 1 == n || p[r + 1] == b'/') {
            // . element
            r += 1;
        } else if p[r] == b'.' && p[r + 1] == b'.' && (r + 2 == n || p[r + 2] == b'/') {
            // .. element: remove to last /
            r += 2;
            if out.w > dotdot {
                // can backtrack
                out.w -= 1;
                while out.w > dotdot && out.index(out.w) != b'/' {
                    out.w -= 1;
                }
            } else if !rooted {
                // cannot backtrack, but not rooted, so append .. element.
                if out.w > 0 {
                    out.append(b'/');
                }
                out.append(b'.');
                out.append(b'.');
                dotdot = out.w;
            }
        } else {
            // real path element; add slash if needed
            if (rooted && out.w != 1) || (!rooted && out.w != 0) {
                out.append(b'/');
            }
            while r < n && p[r] != b'/' {
                out.append(p[r]);
                r += 1;
            }
        }
    }
    if out.w == 0 {
        return ".".to_string();
    }
    String::from_utf8(out.buf[..out.w].to_vec()).expect("only ASCII '/' and '.' were moved")
}

/// Go's `path.Join`, transcribed from the Go standard library.
fn go_join_reference(elem: &[&str]) -> String {
    let size: usize = elem.iter().map(|e| e.len()).sum();
    if size == 0 {
        return String::new();
    }
    let mut buf = String::with_capacity(size + elem.len());
    for e in elem {
        if !buf.is_empty() || !e.is_empty() {
            if !buf.is_empty() {
                buf.push('/');
            }
            buf.push_str(e);
        }
    }
    go_clean_reference(&buf)
}

/// Path-ish text: mostly slashes, dots and a few letters, so that `.`, `..`, `//`, leading and
/// trailing slashes come up all the time; sometimes arbitrary Unicode.
fn pathish() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[/.ab]{0,14}",
        1 => "(/|\\.|\\.\\.|a|bc|/\\.\\./|//){0,8}",
        1 => any::<String>(),
    ]
}

/// A service or node name the registry accepts: not blank, not `.` or `..`, no NUL.
fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9./ _-]{1,12}",
        1 => any::<String>(),
    ]
    .prop_filter("a name the registry accepts", |name| {
        !name.trim().is_empty() && name != "." && name != ".." && !name.contains('\0')
    })
}

/// Arbitrary info: any Unicode (control characters, quotes, backslashes, astral planes).
fn info() -> impl Strategy<Value = Info> {
    btree_map(any::<String>(), any::<String>(), 0..8)
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        // Only floats that serde_json itself reads back exactly: without its `float_roundtrip`
        // feature some (e.g. subnormal) ones come back one ulp off, which is serde_json's
        // precision, not the decoder's contract.
        any::<f64>()
            .prop_filter("finite, read back exactly", |f| {
                f.is_finite()
                    && serde_json::from_str::<f64>(&serde_json::json!(f).to_string()).ok()
                        == Some(*f)
            })
            .prop_map(|f| serde_json::json!(f)),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // A failure prints its minimal input; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn decode_info_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_info(&bytes);
    }

    #[test]
    fn decode_info_never_panics_on_json_like_text(text in "[\\[\\]{}\":,0-9a-zA-Z\\\\ .eE+\\-\t\n\u{0}\u{7f}é]{0,80}") {
        let _ = decode_info(text.as_bytes());
    }

    #[test]
    fn decode_info_never_panics_on_damaged_values(
        info in info(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = encode_info(&info).into_bytes();
        for (at, byte, op) in edits {
            match op {
                0 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte) }
                1 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.remove(i); }
                _ if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte }
                _ => {}
            }
        }
        let _ = decode_info(&bytes);
    }

    #[test]
    fn every_encoded_info_decodes_to_itself(info in info()) {
        let encoded = encode_info(&info);
        prop_assert_eq!(decode_info(encoded.as_bytes()), Ok(info));
    }

    #[test]
    fn encoded_info_surrounded_by_whitespace_still_decodes(info in info(), pad in "[ \t\r\n]{0,4}") {
        let encoded = format!("{pad}{}{pad}", encode_info(&info));
        prop_assert_eq!(decode_info(encoded.as_bytes()), Ok(info));
    }

    #[test]
    fn whitespace_only_values_are_nodes_without_info(value in "[ \t\r\n]{0,16}") {
        prop_assert_eq!(decode_info(value.as_bytes()), Ok(Info::new()));
    }

    #[test]
    fn any_json_object_decodes_with_every_key_and_strings_kept(
        object in btree_map(any::<String>(), json_value(), 0..8),
    ) {
        let value = serde_json::Value::Object(object.clone().into_iter().collect());
        let decoded = decode_info(value.to_string().as_bytes()).expect("an object decodes");
        prop_assert_eq!(decoded.keys().collect::<Vec<_>>(), object.keys().collect::<Vec<_>>());
        for (key, v) in &object {
            match v {
                serde_json::Value::String(s) => prop_assert_eq!(&decoded[key], s),
                other => prop_assert_eq!(&decoded[key], &other.to_string()),
            }
        }
    }

    #[test]
    fn json_that_is_not_an_object_is_a_problem_not_a_panic(value in json_value()) {
        prop_assume!(!value.is_object());
        prop_assert!(decode_info(value.to_string().as_bytes()).is_err());
    }

    #[test]
    fn clean_matches_go(path in pathish()) {
        let cleaned = go_path_clean(&path);
        prop_assert_eq!(&cleaned, &go_clean_reference(&path), "Clean({:?})", path);
        prop_assert_eq!(go_path_clean(&cleaned), cleaned.clone(), "Clean is idempotent");
    }

    #[test]
    fn join_matches_go(elements in vec(pathish(), 0..5)) {
        let refs: Vec<&str> = elements.iter().map(String::as_str).collect();
        prop_assert_eq!(go_path_join(&refs), go_join_reference(&refs), "Join({:?})", refs);
    }

    #[test]
    fn node_keys_are_clean_and_end_with_the_node_name(
        base in pathish(),
        service in valid_name(),
        node in valid_name(),
    ) {
        let key = node_key(&base, &service, &node);
        let (service_s, node_s) = (sanitize_name(&service), sanitize_name(&node));
        prop_assert!(!key.contains("//"), "{:?} has an empty element", key);
        prop_assert!(!key.ends_with('/'), "{:?} ends with a slash", key);
        prop_assert!(key.ends_with(&node_s), "{:?} does not end with {:?}", key, node_s);
        let tail = format!("{service_s}/{node_s}");
        prop_assert!(
            key == tail || key.ends_with(&format!("/{tail}")),
            "{:?} does not end with the element {:?}", key, tail
        );
        prop_assert_eq!(&key, &go_join_reference(&[&base, &service_s, &node_s]));
        // What listing and watching read back from the key is the node's (sanitized) name.
        let prefix = service_prefix(&base, &service);
        prop_assert_eq!(node_name_of(&prefix, &key), Some(node_s.as_str()), "prefix {:?}", prefix);
    }

    #[test]
    fn sanitized_names_never_contain_a_slash(name in any::<String>()) {
        let sanitized = sanitize_name(&name);
        prop_assert!(!sanitized.contains('/'));
        prop_assert_eq!(sanitized.chars().count(), name.chars().count());
    }
}

// Endpoints (`check_endpoint` applies the rules of `Config`'s endpoints).
proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn endpoint_checks_never_panic(endpoint in any::<String>()) {
        let _ = check_endpoint(&endpoint);
    }

    #[test]
    fn ordinary_hosts_are_accepted(
        scheme in prop_oneof![Just(""), Just("http://"), Just("https://")],
        host in "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,30}[a-zA-Z0-9])?",
        port in 1u16..,
        pad in "[ \t\n]{0,2}",
    ) {
        let endpoint = format!("{pad}{scheme}{host}:{port}{pad}");
        prop_assert!(check_endpoint(&endpoint).is_ok(), "{:?}", endpoint);
    }

    /// A host with a character a URL cannot hold in a host, or that ends the host (`#`, `?`,
    /// `@`), would fail every call or reach another host: refused, naming the endpoint.
    #[test]
    fn hosts_a_url_cannot_hold_are_refused(
        before in "[a-z0-9.]{0,8}",
        bad in prop::sample::select(vec![
            '{', '}', '|', '"', '<', '>', '\\', '^', '`', '#', '?', '%', '\0', '[', ']',
        ]),
        after in "[a-z0-9.]{0,8}",
        port in 1u16..,
    ) {
        let endpoint = format!("{before}{bad}{after}:{port}");
        let err = check_endpoint(&endpoint).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        prop_assert!(err.message().contains(&format!("{endpoint:?}")), "{}", err);
    }

    /// Credentials have their own settings; one in an endpoint is refused, and its password
    /// never shows in the error.
    #[test]
    fn endpoints_with_a_user_part_are_refused_without_the_password(
        scheme in prop_oneof![Just(""), Just("http://"), Just("https://"), Just("ftp://")],
        user in "[a-z]{0,8}",
        // Upper case first: nothing else in the endpoint or the message has any.
        password in "[A-Z][A-Za-z0-9!$%^&*()/:@#?]{7,15}",
        host in "[a-z0-9.]{1,12}",
        port in 0u16..,
    ) {
        let endpoint = format!("{scheme}{user}:{password}@{host}:{port}");
        let err = check_endpoint(&endpoint).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        prop_assert!(!err.to_string().contains(&password), "{}", err);
    }
}

#[test]
fn deeply_nested_values_are_refused_without_overflowing_the_stack() {
    for open in ["[", "{\"a\":"] {
        let value = open.repeat(100_000);
        assert!(decode_info(value.as_bytes()).is_err());
    }
    let mut nested = "{\"a\":".repeat(100);
    nested.push('1');
    nested.push_str(&"}".repeat(100));
    let _ = decode_info(nested.as_bytes());
}

#[test]
fn the_reference_agrees_with_go_on_its_documented_examples() {
    // Examples from the Go documentation of path.Clean and path.Join.
    for (input, want) in [
        ("a/c", "a/c"),
        ("a//c", "a/c"),
        ("a/c/.", "a/c"),
        ("a/c/b/..", "a/c"),
        ("/../a/c", "/a/c"),
        ("/../a/b/../././/c", "/a/c"),
        ("", "."),
    ] {
        assert_eq!(go_clean_reference(input), want, "Clean({input:?})");
    }
    for (elements, want) in [
        (&["a", "b", "c"][..], "a/b/c"),
        (&["a", "b/c"][..], "a/b/c"),
        (&["a/b", "c"][..], "a/b/c"),
        (&["a/b", "/c"][..], "a/b/c"),
        (&["a/b", "../../../xyz"][..], "../xyz"),
        (&["", ""][..], ""),
        (&["a", ""][..], "a"),
        (&["", "a"][..], "a"),
    ] {
        assert_eq!(go_join_reference(elements), want, "Join({elements:?})");
    }
}
