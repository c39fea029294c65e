//! A generator-driven fuzzer of the YAML reader and the manifest loader (stable toolchain:
//! proptest instead of cargo fuzz). It builds hostile streams from YAML's sharp edges — anchors,
//! aliases and merge keys in every position, deep and wide collections, tags, duplicate keys,
//! odd scalars and broken syntax — and checks that loading never panics, never exceeds the
//! reader's budget, and either yields objects or located problems.

use capstan_manifest::manifest::load_file;
use capstan_manifest::yaml;
use proptest::prelude::*;

/// One piece of a YAML stream.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a: 1\n".to_owned()),
        Just("- x\n".to_owned()),
        Just("---\n".to_owned()),
        Just("...\n".to_owned()),
        Just("k: &a [1, 2, {b: *a}]\n".to_owned()),
        Just("m: &m {x: 1}\nn: {<<: *m, y: 2}\n".to_owned()),
        Just("<<: [*m, *m]\n".to_owned()),
        Just("z: *nothing\n".to_owned()),
        Just("!!binary abc\n".to_owned()),
        Just("t: !custom 5\n".to_owned()),
        Just("a: 1\na: 2\n".to_owned()),
        Just("? [complex, key]\n: v\n".to_owned()),
        Just("s: |\n  block\n  text\n".to_owned()),
        Just("q: \"unterminated\n".to_owned()),
        Just("\t tab: indent\n".to_owned()),
        Just("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n".to_owned()),
        Just("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: &p {a: b}\ndata: *p\n".to_owned()),
        Just("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1e400, template: [*x]}\n".to_owned()),
        Just("apiVersion: v1\nkind: List\nitems: [&i {kind: Pod}, *i, *i]\n".to_owned()),
        "[a-z]{1,8}: [\\[\\]{}&*!|>:,-]{0,12}\n",
        "\\PC{0,40}\n",
        (1usize..200).prop_map(|d| format!("{}{}\n", "[".repeat(d), "]".repeat(d))),
        (1usize..60).prop_map(|d| (0..d).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>()),
        (1usize..400).prop_map(capstan_manifest::hostile::alias_chain),
        (1usize..12, 1usize..9).prop_map(|(w, l)| capstan_manifest::hostile::fan_out(w, l)),
        (1usize..20_000, 1usize..3_000).prop_map(|(b, u)| capstan_manifest::hostile::string_fan_out(b, u)),
    ]
}

fn stream() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..8).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_streams_load_or_fail_with_located_problems(text in stream()) {
        match yaml::parse(&text) {
            Ok(docs) => prop_assert!(docs.len() <= text.matches("---").count() + text.matches("...").count() + 1),
            Err(e) => prop_assert!(e.pos.line >= 1 && e.pos.column >= 1, "{e}"),
        }
        let load = load_file("fuzz.yaml", text.as_bytes());
        for p in &load.problems {
            prop_assert!(p.line >= 1, "{p}");
            prop_assert!(!p.message.is_empty());
        }
        // A Secret's values never appear in a message.
        if text.contains("kind: Secret") {
            for p in &load.problems {
                prop_assert!(!p.message.contains("\"b\""), "{p}");
            }
        }
    }
}
