//! Generators of hostile YAML (alias bombs, deep nesting, wide mappings), shape and size as
//! parameters, for the tests and benchmarks that prove the reader's budgets hold.

/// `levels` anchors, each a list of `width` aliases of the one before: width^levels nodes.
pub fn fan_out(width: usize, levels: usize) -> String {
    let mut text = format!("a0: &a0 [{}]\n", vec!["x"; width].join(", "));
    for i in 1..levels {
        let items = vec![format!("*a{}", i - 1); width].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
    }
    text
}

/// One string of `bytes` bytes, anchored once and aliased `uses` times: few nodes, much text.
pub fn string_fan_out(bytes: usize, uses: usize) -> String {
    let mut text = format!("big: &s {}\nuses:\n", "x".repeat(bytes));
    for _ in 0..uses {
        text.push_str("- *s\n");
    }
    text
}

/// `depth` anchors, each a one-item list holding an alias of the one before: a small file
/// whose tree is `depth` levels deep.
pub fn alias_chain(depth: usize) -> String {
    let mut text = String::from("a0: &a0 [x]\n");
    for i in 1..depth {
        text.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
    }
    text
}

/// A flow sequence nested `depth` times: `[[[…]]]`.
pub fn flow_nesting(depth: usize) -> String {
    format!("{}{}\n", "[".repeat(depth), "]".repeat(depth))
}

/// Block mappings nested `depth` times, one key per level.
pub fn block_nesting(depth: usize) -> String {
    let mut text = String::new();
    for i in 0..depth {
        text.push_str(&" ".repeat(i));
        text.push_str("k:\n");
    }
    text
}

/// One mapping of `keys` distinct keys `k0`, `k1`, … (line n+1 holds `k{n}`).
pub fn wide_map(keys: usize) -> String {
    let mut text = String::with_capacity(keys * 16);
    for i in 0..keys {
        text.push_str(&format!("k{i}: v{i}\n"));
    }
    text
}

/// A ConfigMap whose data holds `keys` short entries (`kN: v`), as a manifest file: 100,000
/// keys make a 1 MiB file, within what Kubernetes stores.
pub fn wide_config_map(keys: usize) -> String {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: wide}\ndata:\n");
    for i in 0..keys {
        text.push_str(&format!(" k{i}: v\n"));
    }
    text
}
